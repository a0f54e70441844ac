"""File helpers the bundle writer and the .tar extractor share: sha256 of a file, read in chunks, and the
permissions a published folder gets (directories 0755, files 0644, less the umask).

Its own module so edgekit.core.bundle and edgekit.core.bundle_tar both import it instead of each other
(tests/test_structure.py: no import cycles). May import: stdlib only.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path


def sha256_file(path: Path, chunk_bytes: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk_bytes):
            h.update(block)
    return h.hexdigest()


def make_readable(root: Path) -> None:
    """Directories 0755 and files 0644 (less the umask) under `root`, itself included: a staging folder
    comes from mkdtemp (0700), and a bundle copied with its permissions (or extracted from a .tar) must
    stay readable by a service user on the device."""
    mask = os.umask(0o022)
    os.umask(mask)
    for p in [root, *root.rglob("*")]:
        if p.is_symlink():
            continue
        os.chmod(p, (0o777 if p.is_dir() else 0o666) & ~mask)
