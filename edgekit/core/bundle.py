"""The bundle: a directory (or a .tar of one) that carries a model to a device. Stdlib only.

Layout:
  manifest.json      schema version, edgekit version, target, task, signature, files with
                     sha256 and size (bytes), provenance (teacher, recipe, stage records),
                     quality metrics
  model.*            the model file(s) for the target's runtime
  tokenizer.json     a Hugging Face `tokenizers` file
  generation.json    generation defaults
  draft/             optional: a speculative-decoding draft model (edgekit.core.bundle_pair)
  manifest.sig       optional: an Ed25519 signature over the exact bytes of manifest.json (written
                     and checked by edgekit.device.signing; never listed in `files`, since the
                     manifest it signs already holds every file's sha256)

Writing is atomic: files are staged in a temporary sibling directory and renamed into place.
Loading verifies every listed file's size and sha256 and refuses a bundle that does not match,
naming the file. Every file the manifest names for the device to open (model, tokenizer, generation
and reference files, the signature's host tables and segments, Edge TPU compiled files) must be
listed in `files` and lie inside the bundle; `Bundle.file` is the one way to open them.
`write_bundle` and `load_bundle` take an optional callable (`sign`, `check`) for the signature, so the
cryptography lives in the device layer and this module stays stdlib-only.
"""

from __future__ import annotations

import json
import os
import shutil
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Callable

from edgekit.core.errors import BundleError
from edgekit.core.files import make_readable, sha256_file  # also imported from here by callers

MANIFEST = "manifest.json"
SIGNATURE = "manifest.sig"  # signature over MANIFEST's bytes; outside `files` (see module docstring)
SCHEMA_VERSION = 1
_REQUIRED_KEYS = ("schema_version", "edgekit_version", "name", "target", "task", "model", "files")


def file_record(path: Path, root: Path) -> dict:
    """{"path": relative posix path, "sha256": hex, "bytes": size} for a file under root."""
    return {"path": path.relative_to(root).as_posix(), "sha256": sha256_file(path), "bytes": path.stat().st_size}


@dataclass(frozen=True)
class Bundle:
    """A verified bundle on disk: `root` directory and its parsed `manifest`."""

    root: Path
    manifest: dict

    def path(self, rel: str) -> Path:
        return self.root / rel

    def file(self, rel: str) -> Path:
        """The path of a file the manifest names, checked: listed in `files` (so verified) and inside
        the bundle; else BundleError naming it."""
        return listed_file(self.root, self.manifest, rel)

    @property
    def model_file(self) -> Path:
        return self.file(self.manifest["model"]["file"])


def beside_model(manifest: dict, name: str) -> str:
    """The bundle-relative path of a file the signature names (host tables, segments, compiled
    models): they lie in the model file's folder."""
    return (PurePosixPath(manifest["model"]["file"]).parent / name).as_posix()


def sibling_file(folder: Path, name: str) -> Path:
    """A file the signature names, in `folder` (the model file's, from Bundle.file): the name must be a
    plain relative path without `..` (load_bundle has checked that it is listed and verified)."""
    if not isinstance(name, str) or not _plain(name):
        raise BundleError(f"{folder}: manifest names a file outside the bundle: {name!r}")
    return Path(folder) / name


def _plain(rel: str) -> bool:
    p = PurePosixPath(rel)
    return bool(rel) and "\\" not in rel and not p.is_absolute() and ".." not in p.parts


def referenced_files(manifest: dict) -> list[str]:
    """Bundle-relative paths of every file the device code opens for this manifest."""
    model, sig = manifest.get("model", {}), manifest.get("signature") or {}
    refs = [model.get("file"), (manifest.get("tokenizer") or {}).get("file"), manifest.get("generation_file"),
            manifest.get("reference_file")]
    beside = [sig.get("host_file")] + [seg.get("file") for seg in sig.get("segments") or []]
    beside += list(model.get("accelerated_files") or [])
    refs += [beside_model(manifest, n) if isinstance(n, str) and model.get("file") else n for n in beside if n]
    draft = manifest.get("draft") or {}
    if draft.get("file"):  # a speculative-decoding draft (edgekit.core.bundle_pair): its model and files beside it
        dsig = draft.get("signature") or {}
        near = list(draft.get("extra_files") or []) + [dsig.get("host_file")]
        near += [seg.get("file") for seg in dsig.get("segments") or []]
        refs += [draft["file"]] + [beside_model({"model": draft}, n) if isinstance(n, str) else n for n in near if n]
    return [r for r in refs if r is not None]


def listed_file(root: Path, manifest: dict, rel) -> Path:
    """`root / rel` when `rel` is listed in the manifest's files and stays inside `root`; else BundleError."""
    listed = {rec.get("path") for rec in manifest.get("files", [])}
    if not isinstance(rel, str) or not _plain(rel):
        raise BundleError(f"{root}: manifest names a file outside the bundle: {rel!r}")
    if PurePosixPath(rel).as_posix() not in listed:
        raise BundleError(f"{root}: manifest names '{rel}' for the device to open, but it is not among the "
                          "manifest's checked files; refusing an unverified file")
    p = (root / rel).resolve()
    if root.resolve() not in p.parents:
        raise BundleError(f"{root}: manifest names a file outside the bundle: {rel!r}")
    return root / rel


def write_bundle(staging: Path, manifest: dict, out: Path, tar: bool = False,
                 sign: Callable[[bytes], bytes] | None = None) -> Bundle:
    """Hash every file in `staging`, add manifest.json, and move the result to `out` atomically.

    `staging` must be a directory on the same filesystem as `out` (see `staging_dir`). An
    existing bundle at `out` is replaced; an existing non-bundle path is refused. With `tar`,
    `out` + ".tar" is written too (also via a temporary name). With `sign` (manifest bytes ->
    signature file bytes), manifest.sig is written before the bundle is published, so the folder
    and the .tar carry it; a stale manifest.sig in `staging` is dropped (it signed another manifest).
    """
    (staging / SIGNATURE).unlink(missing_ok=True)
    files = sorted(p for p in staging.rglob("*") if p.is_file() and p.name != MANIFEST)
    manifest = dict(manifest, files=[file_record(p, staging) for p in files])
    manifest.setdefault("schema_version", SCHEMA_VERSION)
    raw = (json.dumps(manifest, indent=2, sort_keys=False) + "\n").encode("utf-8")
    write_atomic(staging / MANIFEST, raw)
    if sign is not None:
        write_atomic(staging / SIGNATURE, sign(raw))

    make_readable(staging)
    if out.exists() and not (out / MANIFEST).is_file():
        raise BundleError(f"{out} exists and is not an edgekit bundle; refusing to replace it")
    old = None
    if out.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
        os.replace(out, old)  # renaming a directory over an empty one is atomic on POSIX
    os.replace(staging, out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    if tar:
        write_tar(out, out.with_name(out.name + ".tar"))
    return Bundle(out, manifest)


def write_atomic(path: Path, data: bytes) -> None:
    """Write `data` to `path` through a temporary sibling renamed into place."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def write_tar(root: Path, tar_path: Path) -> None:
    """`tar_path`: an uncompressed .tar of the bundle folder `root` (member names start with its
    name), written under a temporary name and renamed into place."""
    tmp_tar = tar_path.with_name(tar_path.name + ".tmp")
    with tarfile.open(tmp_tar, "w") as tf:
        tf.add(root, arcname=root.name)
    os.replace(tmp_tar, tar_path)


def bundle_log_name(manifest: dict) -> str:
    """A file-name stem unique to a kind of bundle: `<name>-<target>-<precision>` (the arm-cpu and coral
    bundles of one recipe, or its int8 and fp32 builds, write separate logs), safe characters only."""
    model = manifest.get("model", {})
    target = manifest.get("target", {})
    parts = [manifest.get("name", "bundle"), target.get("name", "") if isinstance(target, dict) else str(target),
             model.get("precision", "")]
    stem = "-".join(p for p in parts if p)
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in stem)


def staging_dir(out: Path) -> Path:
    """A fresh temporary directory beside `out`, so the final rename stays on one filesystem."""
    out.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f".{out.name}.staging-", dir=out.parent))


def _read_manifest(root: Path, check: Callable[[Path, bytes], None] | None = None) -> dict:
    mpath = root / MANIFEST
    if not mpath.is_file():
        raise BundleError(f"{root}: not an edgekit bundle (no {MANIFEST})")
    raw = mpath.read_bytes()
    if check is not None:
        check(root, raw)  # the bytes checked are the bytes parsed below
    try:
        manifest = json.loads(raw.decode("utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise BundleError(f"{mpath}: manifest is not valid JSON ({exc})") from None
    missing = [k for k in _REQUIRED_KEYS if k not in manifest]
    if missing:
        raise BundleError(f"{mpath}: manifest lacks required keys: {', '.join(missing)}")
    if manifest["schema_version"] > SCHEMA_VERSION:
        raise BundleError(
            f"{mpath}: bundle schema version {manifest['schema_version']} is newer than this edgekit "
            f"understands ({SCHEMA_VERSION}); upgrade edgekit"
        )
    return manifest


def verify_files(root: Path, manifest: dict) -> None:
    """Check each listed file exists with the recorded size and sha256, and that every file the
    device opens is one of them (inside the bundle); raise BundleError naming it."""
    for rec in manifest["files"]:
        rel = rec["path"]
        p = (root / rel).resolve()
        if root.resolve() not in p.parents:
            raise BundleError(f"{root}: manifest lists a file outside the bundle: {rel}")
        if not p.is_file():
            raise BundleError(f"{root}: file '{rel}' listed in the manifest is missing")
        size = p.stat().st_size
        if size != rec["bytes"]:
            raise BundleError(
                f"{root}: file '{rel}' is {size} bytes, manifest says {rec['bytes']} (truncated or replaced)"
            )
        if sha256_file(p) != rec["sha256"]:
            raise BundleError(f"{root}: file '{rel}' fails its sha256 check (modified or corrupted)")
    for rel in referenced_files(manifest):
        listed_file(root, manifest, rel)


def load_bundle(path: str | os.PathLike, extract_to: Path | None = None,
                check: Callable[[Path, bytes], None] | None = None) -> Bundle:
    """Open and verify a bundle directory or .tar.

    A .tar is extracted safely on every supported Python (edgekit.core.bundle_tar: no absolute
    paths, `..`, links or devices) into `extract_to`, or by default once into the cache
    `<EDGEKIT_HOME>/bundles/<sha256 of the archive>/`, reused by later opens (nothing in /tmp).
    `check(root, manifest_bytes)` (e.g. the device layer's signature check) runs on the manifest's
    bytes before they are parsed and before any file is hashed; it raises BundleError to refuse.
    """
    from edgekit.core.bundle_tar import extract_cached, safe_extract

    p = Path(path).expanduser()
    if not p.exists():
        raise BundleError(f"bundle not found: {p}")
    if p.is_file():
        if not tarfile.is_tarfile(p):
            raise BundleError(f"{p}: neither a bundle directory nor a .tar of one")
        if extract_to is None:
            from edgekit.core.paths import edgekit_home

            dest = extract_cached(p, edgekit_home() / "bundles")
        else:
            extract_to.mkdir(parents=True, exist_ok=True)
            safe_extract(p, extract_to)
            dest = extract_to
        roots = [d for d in dest.iterdir() if (d / MANIFEST).is_file()]
        if len(roots) != 1:
            raise BundleError(f"{p}: archive does not contain exactly one bundle directory")
        p = roots[0]
    manifest = _read_manifest(p, check)
    verify_files(p, manifest)
    return Bundle(p, manifest)
