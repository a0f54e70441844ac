"""The used-by job's steps and its record: phases with seconds, checks with pass/fail, JSON output.

Host work (wheel, bundles, reference text) runs the host's Python; device work runs under emulation
through guest.Guest. Stdlib only. Times are seconds.
"""

from __future__ import annotations

import contextlib
import fnmatch
import hashlib
import json
import os
import shutil
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import checks

# jsonschema: the structured-output tests validate replies with it (without it they skip on the device path)
TEST_DEPS = ["pytest>=8", "httpx>=0.27", "hypothesis>=6.100", "openai>=1.40", "jsonschema>=4.18"]
# Tests that fail only because of the emulator, per release, with the reason (recorded in the JSON).
# Empty: the one there was (a missing vcgencmd read as exit 127 under qemu-user's posix_spawn) is now
# handled in edgekit/device/power/vcgencmd.py, which looks the command up before starting it.
EMULATOR_DESELECT: dict[str, dict[str, str]] = {}
# `edgekit verify` must exist and pass on every bundle (a missing command fails the check).
VERIFY_MANDATORY = True
_SOURCES = ("edgekit", "targets", "models", "setup.py")


@dataclass
class Run:
    work: Path
    cache: Path
    host_python: str
    repo: Path
    xfail: list[str]
    facts: dict = field(default_factory=dict)
    phases: dict = field(default_factory=dict)
    results: list = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    # --- record -----------------------------------------------------------------------------
    def log(self, msg: str) -> None:
        with self._lock:
            print(f"[aarch64 {time.strftime('%H:%M:%S')}] {msg}", flush=True)

    @contextlib.contextmanager
    def phase(self, name: str):
        t = time.monotonic()
        self.log(f"phase {name} ...")
        try:
            yield
        finally:
            self.phases[name] = round(time.monotonic() - t, 1)
            self.log(f"phase {name}: {self.phases[name]} s")

    def timed(self, name: str, fn, *args):
        with self.phase(name):
            return fn(*args)

    def check(self, name: str, problems: list[str], data: dict | None = None, skip: str | None = None,
              note: str = "") -> bool:
        known = any(fnmatch.fnmatchcase(name, x) for x in self.xfail)
        if skip:
            status = "skip"
        elif problems:
            status = "xfail" if known else "FAIL"
        else:
            status = "xpass" if known else "pass"
        detail = skip or "; ".join(problems) or note
        with self._lock:
            self.results.append({"check": name, "status": status, "detail": detail, "data": data or {}})
        self.log(f"{status:5} {name}{': ' + detail[:300] if detail else ''}")
        return not problems

    def finish(self, json_path: Path) -> int:
        width = max([len(r["check"]) for r in self.results] + [10])
        print(f"\n{'check':{width}}  status  detail")
        for r in self.results:
            print(f"{r['check']:{width}}  {r['status']:6}  {r['detail'][:150]}")
        print("\nphase seconds: " + ", ".join(f"{k} {v}" for k, v in self.phases.items()))
        failed = [r for r in self.results if r["status"] == "FAIL"]
        counts = {s: sum(r["status"] == s for r in self.results) for s in ("pass", "FAIL", "xfail", "xpass", "skip")}
        print("totals: " + ", ".join(f"{k} {v}" for k, v in counts.items()) + f"; {self.facts.get('total_seconds')} s")
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps({"facts": self.facts, "phases_seconds": self.phases, "totals": counts,
                                         "results": self.results}, indent=1, default=str))
        print(f"wrote {json_path}")
        return 1 if failed or not self.results else 0

    # --- host side --------------------------------------------------------------------------
    def host(self, *args: str, timeout: float = 1800) -> subprocess.CompletedProcess:
        return subprocess.run([self.host_python, *args], cwd=self.repo, capture_output=True, text=True,
                              timeout=timeout)

    def build_wheel(self) -> Path:
        out = self.work / "wheel"
        shutil.rmtree(out, ignore_errors=True)
        r = self.host("-m", "pip", "wheel", "-q", "--no-deps", "-w", str(out), str(self.repo))
        wheels = sorted(out.glob("*.whl"))
        if r.returncode or len(wheels) != 1:
            raise RuntimeError(f"pip wheel failed ({r.returncode}): {r.stderr[-1500:]}")
        self.facts["wheel"] = wheels[0].name
        self.log(f"wheel {wheels[0].name}")
        return wheels[0]

    def source_key(self) -> str:
        h = hashlib.sha256()
        for top in _SOURCES:
            p = self.repo / top
            for f in sorted([p] if p.is_file() else p.rglob("*")):
                if f.is_file() and "__pycache__" not in f.parts:
                    h.update(str(f.relative_to(self.repo)).encode() + b"\0" + f.read_bytes())
        return h.hexdigest()[:16]

    def build_bundles(self, targets: list[str]) -> dict[str, dict]:
        """{target: {"dir", "tar", "manifest"}}: stories260k bundles, reused from the cache when the
        sources are unchanged. One work dir, so the distilled student is trained once."""
        key = self.source_key()
        base = self.cache / "bundles" / key
        self.facts["bundle_cache_key"] = key
        found = {}
        for t in targets:
            d = base / f"stories260k-{t}"
            if not (d / "manifest.json").is_file() or not d.with_name(d.name + ".tar").is_file():
                t0 = time.monotonic()
                r = self.host("-m", "edgekit", "build", "--target", t, "--recipe", "stories260k", "--out", str(d),
                              "--work-dir", str(base / "work"), "--tar")
                self.check(f"host build {t}", [] if r.returncode == 0 else [checks.last_line(r.stderr)],
                           {"seconds": round(time.monotonic() - t0, 1)})
                if r.returncode:
                    continue
            else:
                self.log(f"bundle {t}: cached ({key})")
            found[t] = {"dir": d, "tar": d.with_name(d.name + ".tar"),
                        "manifest": json.loads((d / "manifest.json").read_text())}
        shutil.rmtree(base / "work", ignore_errors=True)
        for old in (self.cache / "bundles").iterdir():  # keep only this source's bundles
            if old.name != key:
                shutil.rmtree(old, ignore_errors=True)
        return found

    def host_reference(self, bundles: dict) -> dict:
        """The host's answers for every bundle (its own device runtime, same requests)."""
        ref = {}
        for t, b in bundles.items():
            res = checks.serve_check([self.host_python, "-m", "edgekit"], b["dir"], self.work / "host" / t,
                                     _host_env(), startup_timeout=120, extra=_fallback(b))
            self.check(f"host serve {t}", res["problems"], _brief(res))
            ref[t] = res
        return ref

    # --- device side ------------------------------------------------------------------------
    def make_venv(self, name: str, g, wheel: Path, with_tests: bool) -> Path | None:
        venv = self.work / f"venv-{name}" / "edgekit"  # ~/edgekit, as README's Pi section makes it
        venv.parent.mkdir(parents=True, exist_ok=True)
        steps = g.make_venv(venv, wheel, [], self.cache / "pip")
        ok = bool(steps) and steps[-1]["rc"] == 0
        self.facts[f"install_steps_{name}"] = steps
        verbatim = [s["command"] for s in steps if s["readme"] and s["rc"] == 0]
        failed_verbatim = [s["command"] for s in steps if s["readme"] and s["rc"]]
        substitutes = [s["command"] for s in steps if not s["readme"]]
        info = self.guest_info(g, venv) if ok else {}
        problems = [] if ok else [f"{steps[-1]['command']}: {steps[-1]['stderr_tail'][-400:]}"]
        litert = info.get("versions", {}).get("ai-edge-litert", "")
        if ok and not litert.startswith("2."):
            problems.append(f"ai-edge-litert {litert or 'missing'}, want 2.x (what a real aarch64 pip picks)")
        note = (f"python {info.get('python')}, ai-edge-litert {litert}, onnxruntime "
                f"{info.get('versions', {}).get('onnxruntime')}; README verbatim: {len(verbatim)} step(s)"
                + (f"; failed verbatim {failed_verbatim}" if failed_verbatim else "")
                + (f"; substituted {len(substitutes)} step(s)" if substitutes else ""))
        self.check(f"{name} install", problems, dict(info, readme_verbatim=verbatim, readme_failed=failed_verbatim,
                                                     substitutes=substitutes), note=note)
        if ok and with_tests:
            r = g.run(g.venv_python(venv, "-m", "pip", "install", "-q", *TEST_DEPS), PIP_CACHE_DIR=str(self.cache / "pip"))
            self.check(f"{name} install test deps", [] if r.returncode == 0 else [r.stderr[-400:]])
        return venv if ok else None

    def guest_info(self, g, venv: Path) -> dict:
        code = ("import json, os, platform, sys, tarfile, importlib.metadata as m\n"
                "names = ['edgekit', 'edgekit-ml', 'numpy', 'onnxruntime', 'ai-edge-litert', 'tokenizers']\n"
                "v = {}\nfor n in names:\n    try: v[n] = m.version(n)\n    except m.PackageNotFoundError: pass\n"
                "print(json.dumps({'python': sys.version.split()[0], 'machine': platform.machine(),"
                " 'cpus': len(os.sched_getaffinity(0)), 'tar_filters': hasattr(tarfile, 'data_filter'),"
                " 'model': open('/proc/device-tree/model').read().strip(chr(0)), 'versions': v}))")
        r = g.run(g.venv_python(venv, "-c", code), cwd=venv.parent)
        try:
            return json.loads(r.stdout.strip().splitlines()[-1])
        except (ValueError, IndexError):
            return {"error": r.stderr[-500:]}

    def guest_bundles(self, name: str, g, venv: Path, bundles: dict, reference: dict) -> None:
        cpus = _cpus(self.results, name)
        verify = g.run(g.edgekit(venv, "verify", "--help"), cwd=venv.parent).returncode == 0
        self.facts[f"verify_command_{name}"] = verify
        for t, b in bundles.items():
            # no GPU library or Edge TPU in the guest: a hardware-delegate bundle must be refused in one line,
            # and run on the CPU only when the user says so
            fallback = _fallback(b)
            if fallback:
                self.delegate_refusal(name, g, venv, t, b)
            for kind in ("dir", "tar"):
                scratch = self.work / f"serve-{name}" / f"{t}-{kind}"
                res = checks.serve_check(g.edgekit(venv), b[kind], scratch, g.env(), extra=fallback)
                problems = list(res["problems"]) + _compare(t, b, res, reference.get(t, {}))
                mode, threads_problem = checks.threads_check(res.get("props", {}), _target_threads(b), cpus)
                problems += [threads_problem] if threads_problem else []
                self.check(f"{name} serve {t} {kind}", problems, dict(_brief(res), threads_check=mode),
                           note=_serve_note(res, mode))
                if verify or VERIFY_MANDATORY:
                    v = checks.run_cli(g.edgekit(venv, "verify", str(b[kind]), *fallback), self.guest_env(name, g),
                                       cwd=scratch)
                    self.check(f"{name} verify {t} {kind}", [] if v["rc"] == 0 else
                               [f"rc {v['rc']}: {checks.last_line(v['stderr'] or v['stdout'])}"], v)
                else:
                    self.check(f"{name} verify {t} {kind}", [], skip="OPTIONAL: `edgekit verify` not in this build")
            tmp = self.work / f"inspect-{name}" / t / "tmp"
            tmp.mkdir(parents=True, exist_ok=True)
            r = checks.run_cli(g.edgekit(venv, "inspect", str(b["tar"])), dict(self.guest_env(name, g), TMPDIR=str(tmp)),
                               cwd=tmp.parent)
            left = [f for f in checks.files_under(tmp) if f not in checks.RUNTIME_TMP_FILES]
            self.check(f"{name} inspect {t} tar", ([] if r["rc"] == 0 else [f"rc {r['rc']}: {checks.last_line(r['stderr'])}"])
                       + ([f"{len(left)} file(s) left in TMPDIR"] if left else []), dict(r, tmpdir_files=left[:5]))

    def guest_env(self, name: str, g) -> dict:
        """The guest's environment with an EDGEKIT_HOME of this release's own: the releases run side by
        side, and two processes extracting the same .tar into one cache must not meet there."""
        home = self.work / f"home-{name}"
        home.mkdir(parents=True, exist_ok=True)
        return g.env(EDGEKIT_HOME=str(home))

    def delegate_refusal(self, name: str, g, venv: Path, t: str, b: dict) -> None:
        """`edgekit serve` of a GPU / Edge TPU bundle where the delegate is missing: exit 1 with one line
        naming --allow-cpu-fallback, before anything listens."""
        scratch = self.work / f"refuse-{name}" / t
        scratch.mkdir(parents=True, exist_ok=True)
        r = checks.run_cli(g.edgekit(venv, "serve", str(b["dir"]), "--port", str(checks.free_port())),
                           self.guest_env(name, g), cwd=scratch, timeout=300)
        problems = [] if r["rc"] == 1 and "--allow-cpu-fallback" in r["stderr"] and "Traceback" not in r["stderr"] \
            else [f"want rc 1 and one line naming --allow-cpu-fallback; rc {r['rc']}: {checks.last_line(r['stderr'])}"]
        self.check(f"{name} serve {t} refused without its delegate", problems, r)

    def power(self, name: str, g, venv: Path) -> None:
        """`edgekit power` on the emulated Pi 5 (device-tree model in the sysroot): with the recorded-output
        stand-in vcgencmd (bench/pi5) on PATH it must pick rpi-pmic, measured; without one, the rpi5
        estimate (measured: false), never an x86 profile."""
        scratch = self.work / f"power-{name}"
        scratch.mkdir(parents=True, exist_ok=True)
        env = dict(self.guest_env(name, g), EDGEKIT_VCGENCMD_SECONDS="0.024")
        for label, path in (("pmic", f"{self.repo / 'bench' / 'pi5'}:{env.get('PATH', '')}"),
                            ("no vcgencmd", env.get("PATH", ""))):
            r = checks.run_cli(g.edgekit(venv, "power", "--json", "--seconds", "0.3", "--target", "arm-cpu"),
                               dict(env, PATH=path), cwd=scratch)
            problems = [] if r["rc"] == 0 else [f"rc {r['rc']}: {checks.last_line(r['stderr'])}"]
            try:
                rows = json.loads(r["stdout"])
            except ValueError:
                rows = []
            chosen = next((row for row in rows if row.get("available")), {})
            want = ("rpi-pmic", True) if label == "pmic" else ("estimate", False)
            if (chosen.get("source"), chosen.get("measured")) != want:
                problems.append(f"auto would use {chosen.get('source')} (measured {chosen.get('measured')}), want {want}")
            if "x86" in json.dumps(chosen):
                problems.append("the chosen source mentions x86 on a Pi 5")
            self.check(f"{name} power {label}", problems, {"chosen": chosen, "rc": r["rc"]},
                       note=f"{chosen.get('source')}: {str(chosen.get('detail', ''))[:80]}")

    def hostile(self, name: str, g, venv: Path, bundles: dict) -> None:
        t = next(iter(bundles))
        outside = self.work / f"outside-{name}"  # per release: the releases run side by side
        outside.mkdir(exist_ok=True)
        for kind, tar in checks.hostile_tars(bundles[t]["dir"], self.work / f"hostile-tars-{name}", outside).items():
            res = checks.hostile_check(g.edgekit(venv), tar, self.work / f"hostile-{name}" / kind, g.env(), outside)
            self.check(f"{name} hostile tar {kind}", res["problems"], res)

    def test_tier(self, name: str, g, venv: Path, files: str) -> None:
        sel = [f"tests/{f}" if "/" not in f else f for f in files.split(",") if f] or ["tests"]
        t0 = time.monotonic()
        (self.work / f"tier-{name}").mkdir(parents=True, exist_ok=True)
        deselect = EMULATOR_DESELECT.get(name, {})
        opts = [a for test in deselect for a in ("--deselect", test)]
        r = g.run(g.venv_python(venv, "-m", "pytest", "-q", "-m", "not full", "-p", "no:cacheprovider", *opts, *sel),
                  cwd=self.repo, timeout=3600, TMPDIR=str(self.work / f"tier-{name}"))
        summary = (r.stdout.strip().splitlines() or [""])[-1]
        self.check(f"{name} test tier ({len(sel)} path(s))", [] if r.returncode == 0 else [summary or r.stderr[-300:]],
                   {"seconds": round(time.monotonic() - t0, 1), "summary": summary, "deselected_for_emulator": deselect,
                    "stdout_tail": r.stdout[-12000:]}, note=f"{summary}; {len(deselect)} deselected (emulator)")


def _host_env() -> dict:
    return {k: v for k, v in os.environ.items() if not k.startswith("QEMU_")}


def _brief(res: dict) -> dict:
    keep = ("startup_seconds", "request_seconds", "texts", "host_texts", "matches_host", "chat", "props",
            "exit_code", "tmpdir_files", "runtime_tmp_files", "problems")
    out = {k: res[k] for k in keep if k in res}
    if res.get("problems"):
        out["log_tail"] = res.get("log_tail", "")[-1200:]
    return out


def _serve_note(res: dict, threads_mode: str) -> str:
    text = "" if "matches_host" not in res else ("; text = host" if res["matches_host"] else "; text != host (recorded)")
    extra = f"; runtime tmp files {res['runtime_tmp_files']}" if res.get("runtime_tmp_files") else ""
    return (f"startup {res.get('startup_seconds')} s, threads {res.get('props', {}).get('threads')} "
            f"({threads_mode}){text}{extra}")


def _compare(target: str, b: dict, res: dict, ref: dict) -> list[str]:
    """TFLite text must equal the host's; ONNX must answer (int8 kernels differ: text recorded)."""
    if "texts" not in res or "texts" not in ref:
        return []
    fmt = b["manifest"].get("model", {}).get("format")
    if fmt != "tflite":
        empty = [p for p, text in res["texts"].items() if not text]
        res["host_texts"] = ref["texts"]
        res["matches_host"] = res["texts"] == ref["texts"]
        return [f"empty completion for {empty}"] if empty else []
    res["matches_host"] = res["texts"] == ref["texts"] and res.get("chat") == ref.get("chat")
    diff = [p for p in ref["texts"] if res["texts"].get(p) != ref["texts"][p]]
    if res.get("chat") != ref.get("chat"):
        diff.append("chat")
    return [f"greedy text differs from the host's for {diff}: {res['texts']} vs {ref['texts']}"] if diff else []


def _target_delegate(b: dict) -> str:
    return str(b["manifest"].get("model", {}).get("delegate", "none"))


def _fallback(b: dict) -> tuple[str, ...]:
    """No GPU library or Edge TPU on the host or in the guest: hardware-delegate bundles run on the CPU
    only when asked to."""
    return ("--allow-cpu-fallback",) if _target_delegate(b) in ("gpu", "edgetpu") else ()


def _target_threads(b: dict) -> int:
    t = b["manifest"].get("target", {})
    threads = t.get("runtime", {}).get("threads") if isinstance(t, dict) else None
    if threads is None:
        import tomllib
        name = t.get("name") if isinstance(t, dict) else t
        threads = tomllib.loads((Path(__file__).resolve().parents[2] / "targets" / f"{name}.toml").read_text())[
            "runtime"].get("threads", 0)
    return int(threads)


def _cpus(results: list, name: str) -> int:
    for r in results:
        if r["check"] == f"{name} install" and r["data"].get("cpus"):
            return int(r["data"]["cpus"])
    return len(os.sched_getaffinity(0))

