""".tar bundles: safe extraction without tarfile's filters (Python 3.11.2 has none), the sha256-keyed
extraction cache, and bundle permissions a service user can read (fast tier)."""

from __future__ import annotations

import io
import os
import stat
import tarfile
from pathlib import Path

import pytest
from conftest import run_cli
from test_bundle import _make

from edgekit.core.bundle import load_bundle
from edgekit.core.bundle_tar import KEEP, extract_cached, member_problem
from edgekit.core.errors import BundleError


def _tar_with(tmp_path: Path, name: str, kind: bytes = tarfile.REGTYPE, linkname: str = "") -> Path:
    """A real bundle's .tar with one extra member appended."""
    out = _make(tmp_path, tar=True)
    tar = out.with_name(out.name + ".tar")
    with tarfile.open(tar, "a") as tf:
        info = tarfile.TarInfo(name)
        info.type = kind
        info.linkname = linkname
        data = b"" if kind != tarfile.REGTYPE else b"owned"
        info.size = len(data)
        tf.addfile(info, io.BytesIO(data) if data else None)
    return tar


@pytest.mark.parametrize(("name", "kind", "linkname", "why"), [
    ("bundle/../../evil", tarfile.REGTYPE, "", "'..'"),
    ("/etc/evil", tarfile.REGTYPE, "", "absolute path"),
    ("bundle/link", tarfile.SYMTYPE, "/etc/passwd", "links are not allowed"),
    ("bundle/hard", tarfile.LNKTYPE, "bundle/manifest.json", "links are not allowed"),
    ("bundle/dev", tarfile.CHRTYPE, "", "not a regular file"),
    ("bundle/fifo", tarfile.FIFOTYPE, "", "not a regular file"),
])
def test_unsafe_members_are_refused_naming_them(tmp_path, monkeypatch, name, kind, linkname, why):
    monkeypatch.setenv("EDGEKIT_HOME", str(tmp_path / "home"))
    tar = _tar_with(tmp_path, name, kind, linkname)
    with pytest.raises(BundleError, match=why) as err:
        load_bundle(tar)
    assert repr(name)[1:-1] in str(err.value)
    assert not (tmp_path / "evil").exists() and not Path("/etc/evil").exists()
    cache = tmp_path / "home" / "bundles"
    assert not cache.exists() or not any(cache.iterdir()), "a refused archive leaves nothing in the cache"


def test_cli_refuses_unsafe_tar_with_one_line(tmp_path):
    tar = _tar_with(tmp_path, "bundle/../../evil")
    res = run_cli("inspect", str(tar), env={"EDGEKIT_HOME": str(tmp_path / "home")})
    assert res.returncode == 1, res.stdout
    assert "Traceback" not in res.stderr
    assert res.stderr.strip().count("\n") == 0 and "refused archive member 'bundle/../../evil'" in res.stderr


def test_member_problem_accepts_plain_members():
    for kind, name in ((tarfile.REGTYPE, "b/model.onnx"), (tarfile.DIRTYPE, "b"), (tarfile.REGTYPE, "b/x..y")):
        info = tarfile.TarInfo(name)
        info.type = kind
        assert member_problem(info) is None


def test_tar_is_extracted_once_into_the_cache_and_reused(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGEKIT_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("TMPDIR", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    out = _make(tmp_path, tar=True)
    tar = out.with_name(out.name + ".tar")
    first = load_bundle(tar)
    assert first.root.parent.parent == tmp_path / "home" / "bundles"
    stamp = (first.root / "model.onnx").stat().st_mtime_ns
    second = load_bundle(tar)
    assert second.root == first.root and (second.root / "model.onnx").stat().st_mtime_ns == stamp
    assert list((tmp_path / "tmp").iterdir()) == [], "nothing is written to the temporary folder"
    assert [p.name for p in (tmp_path / "home" / "bundles").iterdir()] == [first.root.parent.name]


def test_cache_keeps_the_most_recently_used_extractions(tmp_path):
    cache = tmp_path / "cache"
    folders = []
    for i in range(KEEP + 2):
        out = _make(tmp_path / f"b{i}", tar=True)
        tar = out.with_name(out.name + ".tar")
        with tarfile.open(tar, "a") as tf:  # a distinct archive each time
            info = tarfile.TarInfo(f"{out.name}/extra{i}.txt")
            info.size = 1
            tf.addfile(info, io.BytesIO(b"x"))
        folders.append(extract_cached(tar, cache))
    kept = sorted(p for p in cache.iterdir())
    assert kept == sorted(folders[-KEEP:])


def test_bundles_are_readable_by_other_users(tmp_path):
    old = os.umask(0o022)
    try:
        out = _make(tmp_path, tar=True)
        for p in [out, *out.rglob("*")]:
            mode = stat.S_IMODE(p.stat().st_mode)
            assert mode == (0o755 if p.is_dir() else 0o644), (p, oct(mode))
        home = tmp_path / "home"
        root = extract_cached(out.with_name(out.name + ".tar"), home)
        for p in root.rglob("*"):
            if p.name != ".edgekit-extracted":
                assert stat.S_IMODE(p.stat().st_mode) == (0o755 if p.is_dir() else 0o644), p
    finally:
        os.umask(old)
