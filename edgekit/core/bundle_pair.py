"""A teacher bundle with its distilled student as a speculative-decoding draft, in one bundle.
Stdlib only.

Layout: the teacher bundle's files as they are (it is the model served: its reference data,
generation defaults and tokenizer), plus
  draft/<model file>   the student's model file (and the files its signature names beside it)
and a manifest entry
  "draft": {"file": "draft/model.onnx", "name", "format", "precision", "runtime",
            "max_sequence_length", "parameters", "architecture" (layers ...), "signature",
            "tokenizer": "shared" (the teacher's tokenizer.json, checked identical by sha256),
            "manifest_sha256" (of the student bundle's manifest.json), "verify" (its build's
            verify metrics), "gate"}
Every draft file is listed in `files` with its sha256 like any other, and load_bundle checks it
(edgekit.core.bundle.referenced_files names the draft's files).
"""

from __future__ import annotations

import shutil
from pathlib import Path, PurePosixPath
from typing import Callable

from edgekit.core.bundle import MANIFEST, SIGNATURE, Bundle, sha256_file, staging_dir, write_bundle
from edgekit.core.errors import BundleError

DRAFT_DIR = "draft"


def _check_pair(teacher: Bundle, draft: Bundle) -> None:
    t, d = teacher.manifest, draft.manifest
    for b in (teacher, draft):
        if b.manifest["task"] != "text-generation":
            raise BundleError(f"{b.root}: a draft pair needs text-generation bundles, not '{b.manifest['task']}'")
    if t.get("draft"):
        raise BundleError(f"{teacher.root}: already carries a draft ({t['draft'].get('name')})")
    if sha256_file(teacher.file(t["tokenizer"]["file"])) != sha256_file(draft.file(d["tokenizer"]["file"])):
        raise BundleError(f"{draft.root}: its tokenizer differs from {teacher.root}'s; a draft must share the "
                          "teacher's tokenizer (build it from the same teacher)")
    vocab = [(b.manifest["model"].get("architecture") or {}).get("vocab_size") for b in (teacher, draft)]
    if None not in vocab and vocab[0] != vocab[1]:
        raise BundleError(f"{draft.root}: vocabulary {vocab[1]} differs from the teacher's {vocab[0]}")


def draft_files(draft: Bundle) -> list[str]:
    """Bundle-relative paths of the draft bundle's model file and the files beside it that its
    model opens (signature host tables, segments, extra files)."""
    m = draft.manifest
    model = m["model"]
    folder = PurePosixPath(model["file"]).parent
    names = [model["file"]] + [(folder / n).as_posix() for n in model.get("extra_files") or []]
    sig = m.get("signature") or {}
    names += [(folder / n).as_posix() for n in [sig.get("host_file")] + [s.get("file") for s in sig.get("segments") or []]
              if n]
    return list(dict.fromkeys(names))


def draft_entry(draft: Bundle) -> dict:
    m = draft.manifest
    model = m["model"]
    return {
        "file": (PurePosixPath(DRAFT_DIR) / model["file"]).as_posix(),
        "name": m["name"], "format": model["format"], "precision": model["precision"], "runtime": model["runtime"],
        "max_sequence_length": model["max_sequence_length"], "parameters": model.get("parameters"),
        "architecture": model.get("architecture"), "extra_files": model.get("extra_files") or [],
        "signature": m.get("signature"), "tokenizer": "shared",
        "manifest_sha256": sha256_file(draft.root / MANIFEST),
        "verify": (m.get("metrics") or {}).get("verify"), "gate": m.get("gate"),
    }


def pair_bundles(teacher: Bundle, draft: Bundle, out: Path, tar: bool = False,
                 sign: Callable[[bytes], bytes] | None = None, provenance: dict | None = None) -> Bundle:
    """Write to `out` (atomically) the teacher bundle with `draft`'s model as its draft; both are
    already verified (load_bundle). `provenance` is recorded under the draft entry (how the pair was made)."""
    _check_pair(teacher, draft)
    staging = staging_dir(out)
    try:
        for rec in teacher.manifest["files"]:
            dst = staging / rec["path"]
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(teacher.root / rec["path"], dst)
        for rel in draft_files(draft):
            dst = staging / DRAFT_DIR / rel
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(draft.file(rel), dst)
        (staging / SIGNATURE).unlink(missing_ok=True)
        manifest = {k: v for k, v in teacher.manifest.items() if k != "files"}
        manifest["draft"] = dict(draft_entry(draft), **({"provenance": provenance} if provenance else {}))
        return write_bundle(staging, manifest, out, tar=tar, sign=sign)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
