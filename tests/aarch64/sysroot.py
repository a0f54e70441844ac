"""Build an arm64 Debian sysroot holding one Python, without touching the host's packages.

A private APT configuration (its own sources, lists, cache and an empty dpkg status) resolves the
arm64 dependency closure of `python3.X-venv` for one Debian release; `apt-get download` fetches the
.debs and `dpkg -x` unpacks each into ROOT. Nothing is installed and the host's dpkg architecture
list is left as it is. ROOT/proc holds a Raspberry Pi 5 `cpuinfo` and `device-tree/model`: the
emulator's `-L ROOT` prefix serves them to the guest (onnxruntime segfaults reading the host's).

Stdlib only: this runs on the CI host's Python before any project venv is trusted. Times are seconds.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

KEYRING = "/usr/share/keyrings/debian-archive-keyring.gpg"
PI5_MODEL = "Raspberry Pi 5 Model B Rev 1.0"


@dataclass(frozen=True)
class Release:
    """One Raspberry Pi OS base: the Debian suite and the Python it ships."""
    name: str  # bookworm, trixie
    debian: int
    python: str  # "3.11"


RELEASES = {
    "bookworm": Release("bookworm", 12, "3.11"),
    "trixie": Release("trixie", 13, "3.13"),
}

# Beyond the python3 / python3.X-venv closure, what every Pi OS install has and manylinux wheels
# link against: numpy, onnxruntime and ai-edge-litert need libstdc++.so.6; libgomp for OpenMP builds.
EXTRA = ["libstdc++6", "libgcc-s1", "libgomp1"]
# Bump when the package set or the layout changes: older cached sysroots are rebuilt.
LAYOUT = 2


def _pi5_cpuinfo(cores: int = 4) -> str:
    block = ("processor\t: {i}\nBogoMIPS\t: 108.00\n"
             "Features\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid "
             "asimdrdm lrcpc dcpop asimddp\nCPU implementer\t: 0x41\nCPU architecture: 8\n"
             "CPU variant\t: 0x4\nCPU part\t: 0xd0b\nCPU revision\t: 1\n\n")
    tail = ("Revision\t: d04170\nSerial\t\t: 0000000000000000\nModel\t\t: " + PI5_MODEL + "\n")
    return "".join(block.format(i=i) for i in range(cores)) + tail


def _apt_dir(cache: Path, rel: Release) -> Path:
    """Write the private APT configuration for `rel` (arm64 only) and return its folder."""
    d = cache / f"apt-{rel.name}"
    for sub in ("state/lists/partial", "cache/archives/partial", "parts", "prefs"):
        (d / sub).mkdir(parents=True, exist_ok=True)
    (d / "status").touch()
    suites = f"{rel.name} {rel.name}-updates"
    (d / "sources.list").write_text(
        f"deb [arch=arm64 signed-by={KEYRING}] http://deb.debian.org/debian {suites} main\n"
        f"deb [arch=arm64 signed-by={KEYRING}] http://deb.debian.org/debian-security "
        f"{rel.name}-security main\n")
    conf = {
        "Dir::Etc::SourceList": d / "sources.list", "Dir::Etc::SourceParts": d / "parts",
        "Dir::Etc::Preferences": d / "prefs/none", "Dir::Etc::PreferencesParts": d / "prefs",
        "Dir::State": d / "state", "Dir::State::status": d / "status", "Dir::Cache": d / "cache",
        "APT::Architecture": "arm64", "APT::Sandbox::User": "root", "Acquire::Languages": "none",
    }
    lines = [f'{k} "{v}";' for k, v in conf.items()]
    lines.append('APT::Architectures { "arm64"; };')
    (d / "apt.conf").write_text("\n".join(lines) + "\n")
    return d


def _apt(apt: Path, *args: str, cwd: Path | None = None) -> str:
    env = {"APT_CONFIG": str(apt / "apt.conf"), "PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL": "C"}
    r = subprocess.run(list(args), env=env, cwd=cwd, capture_output=True, text=True)
    if r.returncode:
        raise RuntimeError(f"{' '.join(args[:3])} failed ({r.returncode}): {r.stderr.strip()[-800:]}")
    return r.stdout


def closure(apt: Path, roots: list[str]) -> list[str]:
    """Real (non-virtual) arm64 packages needed by `roots`: Depends and Pre-Depends, recursively."""
    out = _apt(apt, "apt-cache", "depends", "--recurse", "--no-recommends", "--no-suggests",
               "--no-conflicts", "--no-breaks", "--no-replaces", "--no-enhances", *roots)
    names = {line.strip() for line in out.splitlines() if line and not line[0].isspace()}
    names = {n.split(":")[0] for n in names if not n.startswith("<")}
    return sorted(names)


def build(cache: Path, rel: Release, log=print) -> Path:
    """Return ROOT for `rel` under `cache`, building it if it is not there yet."""
    root = cache / f"sysroot-{rel.name}-v{LAYOUT}"
    done = root / ".edgekit-sysroot-done"
    if done.exists():
        return root
    for old in cache.glob(f"sysroot-{rel.name}*"):  # an older layout's sysroot
        shutil.rmtree(old, ignore_errors=True)
    t0 = time.monotonic()
    apt = _apt_dir(cache, rel)
    _apt(apt, "apt-get", "update", "-q")
    py = f"python{rel.python}"
    pkgs = closure(apt, ["python3", "python3-venv", py, f"{py}-venv", *EXTRA])
    debs = apt / "debs"
    debs.mkdir(exist_ok=True)
    have = {p.name.split("_")[0] for p in debs.glob("*.deb")}
    missing = [p for p in pkgs if p not in have]
    if missing:
        _apt(apt, "apt-get", "download", "-q", *missing, cwd=debs)
    tmp = root.with_name(root.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for deb in sorted(debs.glob("*.deb")):
        if deb.name.split("_")[0] in pkgs:
            subprocess.run(["dpkg-deb", "-x", str(deb), str(tmp)], check=True)
    _merge_usr(tmp)
    _fake_pi5(tmp)
    (tmp / ".edgekit-sysroot-done").write_text("\n".join(pkgs) + "\n")
    shutil.rmtree(root, ignore_errors=True)
    tmp.rename(root)
    log(f"sysroot {rel.name}: {len(pkgs)} packages in {time.monotonic() - t0:.0f} s -> {root}")
    return root


def _fake_pi5(root: Path) -> None:
    proc = root / "proc"
    (proc / "device-tree").mkdir(parents=True, exist_ok=True)
    (proc / "cpuinfo").write_text(_pi5_cpuinfo())
    (proc / "device-tree" / "model").write_bytes(PI5_MODEL.encode() + b"\0")


def _merge_usr(root: Path) -> None:
    """Trixie's packages ship only /usr (base-files makes /lib -> usr/lib): the ELF interpreter
    /lib/ld-linux-aarch64.so.1 must resolve inside ROOT."""
    for name in ("bin", "sbin", "lib"):
        if not (root / name).exists() and (root / "usr" / name).is_dir():
            (root / name).symlink_to(f"usr/{name}")


def python_path(root: Path, rel: Release) -> Path:
    return root / "usr" / "bin" / f"python{rel.python}"


if __name__ == "__main__":
    import sys
    c = Path(sys.argv[1])
    for name in sys.argv[2:] or list(RELEASES):
        print(build(c, RELEASES[name]))
