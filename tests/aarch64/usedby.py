"""CI: a Raspberry Pi user's path (Pi OS Bookworm / Trixie, linux/aarch64) under QEMU user-mode emulation.

Builds (or reuses) an arm64 sysroot per Debian release, the project's wheel and stories260k bundles
on the host, installs the wheel into a fresh aarch64 venv per Python, then serves every bundle
(directory and .tar) under emulation and compares greedy text with the host's; inspects the .tar,
runs `edgekit verify` when the command exists, feeds hostile archives and runs the fast test tier.
Prints a summary table, writes JSON (default bench/results/aarch64.json), exits 1 on any failure
not listed with --xfail.

Run by the host's Python (stdlib only here; the host's edgekit and its build extras come from the
project's venv: EDGEKIT_CI_HOST_PYTHON or this interpreter). Cache: EDGEKIT_CI_CACHE (default
~/.cache/edgekit-ci): sysroots, pip's cache, bundles keyed by a hash of the sources. Times are seconds.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import guest as guestmod
import phases
import sysroot

REPO = Path(__file__).resolve().parents[2]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--releases", default="bookworm,trixie", help="Debian releases (comma-separated)")
    ap.add_argument("--targets", default="arm-cpu,coral,onnx-cpu")
    ap.add_argument("--test-tier", default="bookworm,trixie",
                    help="releases whose venv runs `pytest -m 'not full'` (comma-separated; 'none' skips)")
    ap.add_argument("--test-files", default="", help="run only these test files (comma-separated) in the tier")
    ap.add_argument("--cache", type=Path, default=Path(os.environ.get("EDGEKIT_CI_CACHE", "~/.cache/edgekit-ci")))
    ap.add_argument("--work", type=Path, default=None,
                    help="scratch folder (default: a new temporary one, removed at the end unless a check "
                         "failed or --keep-work)")
    ap.add_argument("--keep-work", action="store_true", help="keep the temporary scratch folder (for debugging)")
    ap.add_argument("--json", type=Path, default=REPO / "bench" / "results" / "aarch64.json")
    ap.add_argument("--no-binfmt", action="store_true", help="always call the emulator explicitly")
    ap.add_argument("--xfail", action="append", default=[],
                    help="check-name glob expected to fail, e.g. '* tar' (reported xfail/xpass, not a job failure)")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    cache = args.cache.expanduser().resolve()
    cache.mkdir(parents=True, exist_ok=True)
    work = (args.work or Path(tempfile.mkdtemp(prefix="edgekit-aarch64-"))).resolve()
    work.mkdir(parents=True, exist_ok=True)
    host_py = os.environ.get("EDGEKIT_CI_HOST_PYTHON") or sys.executable
    rels = [sysroot.RELEASES[r] for r in args.releases.split(",") if r]
    run = phases.Run(work=work, cache=cache, host_python=host_py, repo=REPO, xfail=args.xfail)
    t_all = time.monotonic()
    qemu = guestmod.qemu_binary()
    binfmt, ours, why = (False, False, "--no-binfmt") if args.no_binfmt else guestmod.setup_binfmt(qemu, run.log)
    run.facts.update(qemu=qemu, binfmt=binfmt, binfmt_note=why, host_python=host_py, work=str(work),
                     cache=str(cache), host_cpus=len(os.sched_getaffinity(0)))
    run.log(f"emulation: {'binfmt_misc (transparent)' if binfmt else 'explicit qemu-aarch64-static'}: {why}")
    try:
        _all(run, args, rels, qemu, binfmt)
    finally:
        if ours:
            guestmod.remove_binfmt()
        failed = any(r["status"] == "FAIL" for r in run.results)
        if args.work is None and not args.keep_work and not failed:  # scratch is ~1 GB a run: CI disks fill up
            shutil.rmtree(work, ignore_errors=True)  # a failed run keeps it: its server logs say why
        run.facts["work_removed"] = not work.exists()
    run.facts["total_seconds"] = round(time.monotonic() - t_all, 1)
    return run.finish(args.json)


def _all(run: "phases.Run", args, rels, qemu: str, binfmt: bool) -> None:
    with run.phase("sysroots"), cf.ThreadPoolExecutor(len(rels)) as ex:
        roots = dict(zip([r.name for r in rels], ex.map(lambda r: sysroot.build(run.cache, r, run.log), rels)))
    guests = {r.name: guestmod.Guest(roots[r.name], r.python, qemu, binfmt) for r in rels}
    with run.phase("wheel"):
        wheel = run.build_wheel()
    targets = [t for t in args.targets.split(",") if t]
    tier = [] if args.test_tier == "none" else [r for r in args.test_tier.split(",") if r in guests]
    # Emulated installs and host bundle builds overlap: each is timed on its own.
    with run.phase("venvs+bundles"), cf.ThreadPoolExecutor(len(rels) + 1) as ex:
        bundles_f = ex.submit(run.timed, "bundles", run.build_bundles, targets)
        venv_f = {n: ex.submit(run.timed, f"venv-{n}", run.make_venv, n, g, wheel, n in tier)
                  for n, g in guests.items()}
        bundles = bundles_f.result()
        venvs = {n: f.result() for n, f in venv_f.items()}
    with run.phase("host-reference"):
        reference = run.host_reference(bundles)
    # Each release's guest checks run in their own thread, the two releases side by side: an emulated
    # process is mostly one busy core, so on CI's 2 cores this halves the longest part of the job.
    with run.phase("guests"), cf.ThreadPoolExecutor(max(1, len(guests))) as ex:
        jobs = [ex.submit(_guest_checks, run, name, g, venvs[name], bundles, reference,
                          args.test_files if name in tier else None)
                for name, g in guests.items() if venvs[name] is not None]
        errors = [job.exception() for job in jobs]  # waits for every release; each one's error is logged
        for error in filter(None, errors):
            run.log(f"guest checks stopped: {type(error).__name__}: {error}")
        if any(errors):
            raise next(filter(None, errors))


def _guest_checks(run: "phases.Run", name: str, g, venv, bundles: dict, reference: dict,
                  test_files: str | None) -> None:
    """One release's checks, in order: serve/verify/inspect every bundle, hostile archives, power
    sources, then (when `test_files` is not None) the fast test tier."""
    with run.phase(f"serve-{name}"):
        run.guest_bundles(name, g, venv, bundles, reference)
    with run.phase(f"tar-safety-{name}"):
        run.hostile(name, g, venv, bundles)
    with run.phase(f"power-{name}"):
        run.power(name, g, venv)
    if test_files is not None:
        with run.phase(f"test-tier-{name}"):
            run.test_tier(name, g, venv, test_files)


if __name__ == "__main__":
    sys.exit(main())
