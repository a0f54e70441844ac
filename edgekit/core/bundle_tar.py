"""Opening a `.tar` bundle safely, on every Python edgekit supports, into a reusable cache. Stdlib only.

Safety does not depend on `tarfile`'s extraction filters (`extractall(filter=...)` exists only from
Python 3.11.4; Raspberry Pi OS Bookworm ships 3.11.2): every member is checked here and written by
this module. Refused, naming the member: absolute paths, `..` components, symbolic and hard links,
devices, FIFOs and anything else that is not a regular file or a directory. Files are written mode
0644 and directories 0755 (less the process umask), whatever the archive says.

Where: `<EDGEKIT_HOME>/bundles/<sha256 of the archive>/`, extracted once through a staging folder
renamed into place (a crash leaves no half-extracted bundle under the final name) and reused by every
later `serve`/`inspect`/`verify` of the same archive; nothing is written to /tmp. The cache keeps the
`KEEP` most recently used extractions and removes older ones when it extracts a new archive.

May import: stdlib, edgekit.core.
"""

from __future__ import annotations

import os
import shutil
import tarfile
import tempfile
from pathlib import Path, PurePosixPath

from edgekit.core.files import make_readable, sha256_file
from edgekit.core.errors import BundleError

KEEP = 3
_READY = ".edgekit-extracted"  # written last: a cache folder without it is incomplete


def member_problem(member: tarfile.TarInfo) -> str | None:
    """Why `member` may not be extracted, or None when it is a plain file or directory inside the archive."""
    name = member.name
    parts = PurePosixPath(name).parts
    if name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":"):
        return "absolute path"
    if ".." in parts or any(".." in p.split("\\") for p in parts):
        return "path with '..' leaves the archive"
    if member.issym() or member.islnk():
        return "links are not allowed in a bundle"
    if not (member.isfile() or member.isdir()):
        return "not a regular file or directory (device, FIFO or special member)"
    return None


def safe_extract(archive: Path, dest: Path) -> None:
    """Extract `archive` into the existing directory `dest`, refusing unsafe members (BundleError)."""
    try:
        with tarfile.open(archive) as tf:
            members = tf.getmembers()
            for m in members:
                problem = member_problem(m)
                if problem:
                    raise BundleError(f"{archive}: refused archive member '{m.name}': {problem}")
            for m in members:
                target = dest.joinpath(*PurePosixPath(m.name).parts)
                if m.isdir():
                    target.mkdir(parents=True, exist_ok=True)
                    continue
                target.parent.mkdir(parents=True, exist_ok=True)
                src = tf.extractfile(m)
                with src, open(target, "wb") as out:
                    shutil.copyfileobj(src, out, 1 << 20)
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise BundleError(f"{archive}: cannot extract bundle: {exc}") from None
    make_readable(dest)


def _evict(cache: Path, keep: int, current: Path) -> None:
    """Remove all but the `keep` most recently used complete extractions (never `current`)."""
    done = [d for d in cache.iterdir() if (d / _READY).is_file() and d != current]
    done.sort(key=lambda d: (d / _READY).stat().st_mtime, reverse=True)
    for old in done[max(0, keep - 1):]:
        shutil.rmtree(old, ignore_errors=True)


def extract_cached(archive: Path, cache: Path, keep: int = KEEP) -> Path:
    """The folder holding `archive`'s contents, extracted once under `cache/<sha256>/` and reused."""
    digest = sha256_file(archive)
    final = cache / digest
    if (final / _READY).is_file():
        os.utime(final / _READY)  # most recently used
        return final
    cache.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{digest[:16]}.staging-", dir=cache))
    try:
        safe_extract(archive, staging)
        (staging / _READY).write_text(f"{archive}\n", encoding="utf-8")
        if final.exists():  # an incomplete earlier attempt, or another process finished first
            if (final / _READY).is_file():
                return final
            shutil.rmtree(final, ignore_errors=True)
        try:
            os.replace(staging, final)
        except OSError:  # another process put its complete copy there between the check and the move
            if not (final / _READY).is_file():
                raise
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    _evict(cache, keep, final)
    return final
