"""Used-by checks on one bundle: serve it, query it, stop it; inspect it; refuse hostile archives.

Each check takes the command line that runs `edgekit` (host or emulated aarch64, see guest.py) and
returns a plain dict of what it saw plus `problems` (empty = passed), so the CI driver and a pytest
test can share them. Stdlib only (urllib): the host's Python drives the emulated server.
Times are seconds.
"""

from __future__ import annotations

import io
import json
import os
import signal
import socket
import subprocess
import tarfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

PROMPTS = ["Once upon a time", "The little dog"]
MAX_TOKENS = 16
CHAT = [{"role": "user", "content": "Tell me a story about a cat."}]
# Files a runtime (not edgekit) may keep in TMPDIR by design: reported under `runtime_tmp_files`, not
# failed. Empty: onnxruntime (1.2x-1.32) writes TMPDIR/.ses (its telemetry session id) at import unless
# ORT_DISABLE_TELEMETRY is set, and edgekit sets it (edgekit/device/onnx_model.py), so any file fails.
RUNTIME_TMP_FILES: dict[str, str] = {}


_GIVEN_PORTS: set[int] = set()
_PORT_LOCK = threading.Lock()


def free_port() -> int:
    """A free local TCP port never handed out before in this process: the two emulated releases' checks
    run in threads side by side, and the kernel may offer a just-released port to both."""
    with _PORT_LOCK:
        while True:
            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                port = s.getsockname()[1]
            if port not in _GIVEN_PORTS:
                _GIVEN_PORTS.add(port)
                return port


def http(method: str, url: str, body: dict | None = None, timeout: float = 120) -> tuple[int, dict | str]:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            status, raw = r.status, r.read().decode()
    except urllib.error.HTTPError as exc:
        status, raw = exc.code, exc.read().decode(errors="replace")
    try:
        return status, json.loads(raw)
    except ValueError:
        return status, raw


def files_under(d: Path) -> list[str]:
    return sorted(str(p.relative_to(d)) for p in d.rglob("*") if not p.is_dir())


def serve_check(edgekit: list[str], bundle: Path, scratch: Path, env: dict, startup_timeout: float = 240,
                extra: tuple[str, ...] = ()) -> dict:
    """Start `edgekit serve BUNDLE` with a private TMPDIR and EDGEKIT_HOME, query it, SIGTERM it.

    Returns texts per prompt, the chat answer, /props, timings, the exit code and the files left
    in TMPDIR; `problems` lists what went wrong (a greedy-text comparison is the caller's job).
    """
    tmpdir, home = scratch / "tmp", scratch / "home"
    tmpdir.mkdir(parents=True, exist_ok=True)
    home.mkdir(parents=True, exist_ok=True)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = dict(env, TMPDIR=str(tmpdir), EDGEKIT_HOME=str(home))
    out: dict = {"bundle": str(bundle), "problems": []}
    t0 = time.monotonic()
    with open(scratch / "server.log", "w") as log:
        proc = subprocess.Popen([*edgekit, "serve", str(bundle), "--port", str(port), "--log-level", "warning", *extra],
                                stdout=log, stderr=subprocess.STDOUT, env=env, cwd=scratch)
        try:
            if _wait_healthy(proc, base, startup_timeout, out):
                out["startup_seconds"] = round(time.monotonic() - t0, 1)
                _query(base, out)
        finally:
            out["exit_code"] = _stop(proc)
    out["log_tail"] = (scratch / "server.log").read_text(errors="replace")[-2000:]
    if "startup_seconds" not in out:
        out["problems"].append(f"server said: {last_line(out['log_tail'])}")
    left = files_under(tmpdir)
    out["runtime_tmp_files"] = [f for f in left if f in RUNTIME_TMP_FILES]
    out["tmpdir_files"] = [f for f in left if f not in RUNTIME_TMP_FILES]
    if out["exit_code"] != 0 and "startup_seconds" in out:
        out["problems"].append(f"exit code {out['exit_code']} after SIGTERM (want 0)")
    if out["tmpdir_files"]:
        out["problems"].append(f"{len(out['tmpdir_files'])} file(s) left in TMPDIR: {out['tmpdir_files'][:3]}")
    return out


def _wait_healthy(proc: subprocess.Popen, base: str, timeout: float, out: dict) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            out["problems"].append(f"server exited with {proc.returncode} before /health was 200")
            return False
        try:
            if http("GET", base + "/health", timeout=2)[0] == 200:
                return True
        except (OSError, urllib.error.URLError):
            pass
        time.sleep(0.25)
    out["problems"].append(f"/health not 200 within {timeout:.0f} s")
    return False


def _query(base: str, out: dict) -> None:
    out["texts"], out["request_seconds"] = {}, []
    for prompt in PROMPTS:
        t = time.monotonic()
        status, body = http("POST", base + "/v1/completions",
                            {"prompt": prompt, "max_tokens": MAX_TOKENS, "temperature": 0})
        out["request_seconds"].append(round(time.monotonic() - t, 2))
        if status != 200 or not isinstance(body, dict):
            out["problems"].append(f"/v1/completions {status}: {str(body)[:200]}")
            continue
        out["texts"][prompt] = body["choices"][0]["text"]
        out["completion_tokens"] = body.get("usage", {}).get("completion_tokens")
    status, body = http("POST", base + "/v1/chat/completions",
                        {"messages": CHAT, "max_tokens": MAX_TOKENS, "temperature": 0})
    if status != 200 or not isinstance(body, dict) or not body.get("choices"):
        out["problems"].append(f"/v1/chat/completions {status}: {str(body)[:200]}")
    else:
        out["chat"] = body["choices"][0]["message"]["content"]
    status, body = http("GET", base + "/props")
    if status != 200 or not isinstance(body, dict):
        out["problems"].append(f"/props {status}: {str(body)[:200]}")
    else:
        out["props"] = body


def _stop(proc: subprocess.Popen, timeout: float = 60) -> int | None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        return None


def threads_check(props: dict, target_threads: int, cpus: int) -> tuple[str, str | None]:
    """('checked', problem): /props threads vs the target's runtime.threads (0 = every CPU) capped at `cpus`."""
    got = props.get("threads")
    if "threads_source" not in props:
        return "checked", "/props has no threads_source"
    want = cpus if target_threads <= 0 else min(target_threads, cpus)
    return "checked", None if got == want else f"/props threads {got}, want min({target_threads}, {cpus}) = {want}"


def run_cli(argv: list[str], env: dict, cwd: Path, timeout: float = 600) -> dict:
    """Run a command (cwd outside the checkout, so `python -m edgekit` imports the installed package)."""
    t = time.monotonic()
    r = subprocess.run(argv, env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    return {"rc": r.returncode, "seconds": round(time.monotonic() - t, 1), "stdout": r.stdout[-3000:],
            "stderr": r.stderr[-3000:]}


def last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1][:300] if lines else ""


def one_clear_line(result: dict) -> str | None:
    """Problem with a refusal: it must fail, with exactly one non-empty stderr line and no traceback."""
    lines = [line for line in result["stderr"].splitlines() if line.strip()]
    if result["rc"] == 0:
        return "accepted (exit 0)"
    if "Traceback" in result["stderr"]:
        return f"traceback: {lines[-1][:200] if lines else ''}"
    if len(lines) != 1:
        return f"{len(lines)} stderr lines, want 1: {lines[-1][:200] if lines else ''}"
    return None


def hostile_tars(bundle_dir: Path, out_dir: Path, outside: Path) -> dict[str, Path]:
    """Copies of `bundle_dir` as .tar, each with one hostile member: a `../` path, an absolute path
    (pointing at `outside`) and a symlink to /etc/passwd."""
    out_dir.mkdir(parents=True, exist_ok=True)
    name = bundle_dir.name
    evil = {"dotdot": "../evil", "absolute": str(outside / "absolute-evil"), "symlink": f"{name}/link"}
    paths = {}
    for kind, member in evil.items():
        p = out_dir / f"{name}-{kind}.tar"
        with tarfile.open(p, "w") as tf:
            tf.add(bundle_dir, arcname=name)
            info = tarfile.TarInfo(member)
            if kind == "symlink":
                info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
                tf.addfile(info)
            else:
                data = b"written outside the bundle\n"
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))
        paths[kind] = p
    return paths


def hostile_check(edgekit: list[str], tar: Path, scratch: Path, env: dict, outside: Path) -> dict:
    """`edgekit inspect HOSTILE.tar` must refuse with one clear line and write nothing outside."""
    tmpdir = scratch / "tmp"
    tmpdir.mkdir(parents=True, exist_ok=True)
    before = set(os.listdir(outside)) if outside.exists() else set()
    # EDGEKIT_HOME (where a .tar is extracted) inside scratch, so the search below covers it
    res = run_cli([*edgekit, "inspect", str(tar)], dict(env, TMPDIR=str(tmpdir), EDGEKIT_HOME=str(scratch / "home")),
                  cwd=scratch)
    res["problems"] = [p for p in [one_clear_line(res)] if p]
    written = sorted((set(os.listdir(outside)) if outside.exists() else set()) - before)
    written += [str(p) for p in scratch.rglob("evil")]  # `../evil` lands beside the extraction folder
    if written:
        res["problems"].append(f"wrote outside the bundle: {written}")
    res["tmpdir_files"] = files_under(tmpdir)
    return res
