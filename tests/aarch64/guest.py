"""Run linux/aarch64 programs from an arm64 sysroot under QEMU user-mode emulation.

Two modes:
- binfmt: binfmt_misc is mounted (or can be) and a qemu-aarch64 handler is registered with the
  `F` flag, so aarch64 executables (the venv's python, pip and console scripts) run as they would
  on a Raspberry Pi; QEMU_LD_PREFIX names the sysroot and QEMU_CPU the Pi 5's core.
- explicit: every program is started as `qemu-aarch64-static -cpu cortex-a76 -L ROOT EXE`; a venv
  is made `--without-pip` (ensurepip's subprocess would be an aarch64 exec the kernel cannot run),
  pip comes from Debian's bundled wheel and console scripts run as `python -m MODULE`.

Stdlib only (runs on the CI host's Python). Times are seconds.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

CPU = "cortex-a76"  # Raspberry Pi 5
BINFMT = Path("/proc/sys/fs/binfmt_misc")
HANDLER = "qemu-aarch64"
_MAGIC = r"\x7f\x45\x4c\x46\x02\x01\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00\x02\x00\xb7\x00"
_MASK = r"\xff\xff\xff\xff\xff\xff\xff\x00\xff\xff\xff\xff\xff\xff\xff\xff\xfe\xff\xff\xff"


def qemu_binary() -> str:
    path = shutil.which("qemu-aarch64-static") or shutil.which("qemu-aarch64")
    if not path:
        raise RuntimeError("qemu-aarch64-static not found (apt-get install -y qemu-user-static)")
    return path


def setup_binfmt(qemu: str, log=print) -> tuple[bool, bool, str]:
    """(usable, registered_by_us, why): mount binfmt_misc and register qemu-aarch64 (flag F) if needed."""
    if not (BINFMT / "register").exists():
        r = subprocess.run(["mount", "-t", "binfmt_misc", "binfmt_misc", str(BINFMT)], capture_output=True, text=True)
        if r.returncode or not (BINFMT / "register").exists():
            return False, False, f"cannot mount binfmt_misc: {r.stderr.strip() or r.returncode}"
    entry = BINFMT / HANDLER
    if entry.exists():
        text = entry.read_text()
        if "enabled" in text.splitlines()[0] and "F" in _flags(text):
            return True, False, f"existing {HANDLER} handler ({_interpreter(text)}, flags {_flags(text)})"
        return False, False, f"existing {HANDLER} handler lacks the F flag or is disabled; left as it is"
    rule = f":{HANDLER}:M::{_MAGIC}:{_MASK}:{qemu}:F"
    try:
        (BINFMT / "register").write_text(rule)
    except OSError as exc:
        return False, False, f"cannot register {HANDLER}: {exc}"
    log(f"binfmt: registered {HANDLER} -> {qemu} (flag F)")
    return True, True, f"registered {HANDLER} -> {qemu} (flag F)"


def remove_binfmt() -> None:
    entry = BINFMT / HANDLER
    if entry.exists():
        entry.write_text("-1")


def _flags(text: str) -> str:
    return next((line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("flags:")), "")


def _interpreter(text: str) -> str:
    return next((line.split(None, 1)[1] for line in text.splitlines() if line.startswith("interpreter")), "?")


class Guest:
    """One Debian release's Python, run under emulation; builds and drives venvs of it."""

    def __init__(self, root: Path, python: str, qemu: str, binfmt: bool):
        self.root, self.python, self.qemu, self.binfmt = root, python, qemu, binfmt

    def env(self, **extra: str) -> dict:
        env = dict(os.environ, QEMU_LD_PREFIX=str(self.root), QEMU_CPU=CPU, **extra)
        for var in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV"):  # the host's, not the device's
            env.pop(var, None)
        return env

    def argv(self, exe: Path | str, *args: str) -> list[str]:
        """Command line that runs the aarch64 executable `exe` with `args`."""
        if self.binfmt:
            return [str(exe), *args]
        return [self.qemu, "-cpu", CPU, "-L", str(self.root), str(exe), *args]

    def run(self, argv: list[str], cwd: Path | None = None, timeout: float = 1800, **env: str):
        return subprocess.run(argv, cwd=cwd, env=self.env(**env), capture_output=True, text=True, timeout=timeout)

    def system_python(self) -> Path:
        return self.root / "usr" / "bin" / f"python{self.python}"

    def make_venv(self, venv: Path, wheel: Path, extra: list[str], pip_cache: Path) -> list[dict]:
        """Create `venv` (named `edgekit`, in a scratch HOME: the README says `~/edgekit`) and install
        `wheel` (+ `extra` requirements) by running the README's "On the Raspberry Pi" install lines
        verbatim; returns the steps run, each marked `readme: true` when it is such a line."""
        env = {"PIP_CACHE_DIR": str(pip_cache), "PIP_DISABLE_PIP_VERSION_CHECK": "1", "HOME": str(venv.parent)}
        make, install = readme_install_lines()
        shutil.copy(wheel, venv.parent / wheel.name)  # the README copies the wheel to the Pi's home folder
        steps = []
        if self.binfmt:
            steps.append(self._shell(venv, make, env))
        if not steps or steps[-1]["rc"]:
            shutil.rmtree(venv, ignore_errors=True)
            if not self._bootstrap(venv, env, steps):
                return steps
        if self.binfmt:
            steps.append(self._shell(venv, install, env))
        else:
            r = self.run(self.venv_python(venv, "-m", "pip", "install", str(wheel)), **env)
            steps.append(_step(f"python -m pip install {wheel.name}", r, readme=False))
        if extra and steps[-1]["rc"] == 0:
            r = self.run(self.venv_python(venv, "-m", "pip", "install", *extra), **env)
            steps.append(_step(f"python -m pip install {' '.join(extra)}", r, readme=False))
        return steps

    def _shell(self, venv: Path, command: str, env: dict) -> dict:
        """`command` in bash beside `venv`, with `python3` on PATH being the sysroot's (as on the Pi)."""
        bindir = venv.parent / f"{venv.name}-sysbin"
        bindir.mkdir(parents=True, exist_ok=True)
        if not (bindir / "python3").is_symlink():
            (bindir / "python3").symlink_to(self.root / "usr" / "bin" / "python3")
        path = f"{bindir}:{os.environ.get('PATH', '/usr/bin:/bin')}"
        r = self.run(["bash", "-c", command], cwd=venv.parent, PATH=path, **env)
        return _step(command, r, readme=True)

    def _bootstrap(self, venv: Path, env: dict, steps: list[dict]) -> bool:
        """`python -m venv --without-pip`, then pip from Debian's bundled wheel (substitute steps)."""
        r = self.run(self.argv(self.system_python(), "-m", "venv", "--without-pip", str(venv)))
        steps.append(_step(f"python{self.python} -m venv --without-pip {venv.name}", r, readme=False))
        if r.returncode:
            return False
        pip_whl = sorted((self.root / "usr/share/python-wheels").glob("pip-*.whl"))[-1]
        r = self.run(self.venv_python(venv, f"{pip_whl}/pip", "install", "-q", str(pip_whl)), **env)
        steps.append(_step(f"{venv.name}/bin/python {pip_whl.name}/pip install {pip_whl.name}", r, readme=False))
        return r.returncode == 0

    def edgekit(self, venv: Path, *args: str) -> list[str]:
        """`edgekit ARGS` from the venv: the console script (binfmt) or `python -m edgekit` (explicit)."""
        if self.binfmt:
            return self.argv(venv / "bin" / "edgekit", *args)
        return self.argv(venv / "bin" / "python", "-m", "edgekit", *args)

    def venv_python(self, venv: Path, *args: str) -> list[str]:
        return self.argv(venv / "bin" / "python", *args)


def readme_install_lines(readme: Path = Path(__file__).resolve().parents[2] / "README.md") -> tuple[str, str]:
    """(make the venv, install the wheel): the two install lines of README's "On the Raspberry Pi"
    section, as a Pi user types them."""
    section = readme.read_text(encoding="utf-8").split("### On the Raspberry Pi", 1)[1].split("\n### ", 1)[0]
    lines = [ln.strip() for block in re.findall(r"```sh\n(.*?)\n```", section, flags=re.S)
             for ln in block.splitlines()]
    make = next(ln for ln in lines if ln.startswith("python3 -m venv "))
    install = next(ln for ln in lines if " install ./edgekit_ml-" in ln)
    return make, install


def _step(command: str, r: subprocess.CompletedProcess, readme: bool) -> dict:
    noise = ("is ignored: it is neither a file nor a directory",)  # host pip.conf find-links absent here
    err = "\n".join(line for line in r.stderr.splitlines() if not any(n in line for n in noise))
    return {"command": command, "readme": readme, "rc": r.returncode, "stdout_tail": r.stdout[-1500:], "stderr_tail": err[-1500:]}
