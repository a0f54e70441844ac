"""Bundle format: atomic writes, integrity checks, tar round trip, inspect (fast tier)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from edgekit.core.bundle import MANIFEST, load_bundle, staging_dir, write_bundle
from edgekit.core.errors import BundleError

from conftest import run_cli


def _manifest() -> dict:
    return {"edgekit_version": "0.1.0", "name": "toy", "target": {"name": "onnx-cpu", "description": "d"},
            "task": "text-generation",
            "model": {"file": "model.onnx", "format": "onnx", "precision": "fp32", "runtime": "onnxruntime",
                      "delegate": "none", "max_sequence_length": 32}}


def _make(tmp_path: Path, tar: bool = False) -> Path:
    out = tmp_path / "dist" / "toy-onnx-cpu"
    st = staging_dir(out)
    (st / "model.onnx").write_bytes(bytes(range(256)) * 40)
    (st / "tokenizer.json").write_text("{}")
    write_bundle(st, _manifest(), out, tar=tar)
    return out


def test_write_and_load_records_every_file(tmp_path):
    out = _make(tmp_path)
    b = load_bundle(out)
    files = {f["path"]: f for f in b.manifest["files"]}
    assert set(files) == {"model.onnx", "tokenizer.json"}
    assert files["model.onnx"]["bytes"] == 10240 and len(files["model.onnx"]["sha256"]) == 64
    assert b.manifest["schema_version"] == 1
    assert not list(out.parent.glob(".toy-onnx-cpu.*")), "staging folders must not be left behind"


def test_flipped_byte_is_refused_naming_the_file(tmp_path):
    out = _make(tmp_path)
    p = out / "model.onnx"
    data = bytearray(p.read_bytes())
    data[100] ^= 0xFF
    p.write_bytes(bytes(data))
    with pytest.raises(BundleError, match="file 'model.onnx' fails its sha256 check"):
        load_bundle(out)


def test_truncated_and_missing_files_are_refused(tmp_path):
    out = _make(tmp_path)
    p = out / "model.onnx"
    p.write_bytes(p.read_bytes()[:-1])
    with pytest.raises(BundleError, match="file 'model.onnx' is 10239 bytes, manifest says 10240"):
        load_bundle(out)
    p.unlink()
    with pytest.raises(BundleError, match="file 'model.onnx' listed in the manifest is missing"):
        load_bundle(out)


def test_manifest_problems(tmp_path):
    out = _make(tmp_path)
    (out / MANIFEST).write_text("{not json")
    with pytest.raises(BundleError, match="not valid JSON"):
        load_bundle(out)
    (out / MANIFEST).write_text(json.dumps({"name": "x"}))
    with pytest.raises(BundleError, match="lacks required keys: schema_version"):
        load_bundle(out)
    with pytest.raises(BundleError, match="not an edgekit bundle"):
        load_bundle(tmp_path)
    with pytest.raises(BundleError, match="bundle not found"):
        load_bundle(tmp_path / "nope")


def test_path_escape_in_manifest_is_refused(tmp_path):
    out = _make(tmp_path)
    m = json.loads((out / MANIFEST).read_text())
    m["files"].append({"path": "../outside", "sha256": "0" * 64, "bytes": 1})
    (out / MANIFEST).write_text(json.dumps(m))
    with pytest.raises(BundleError, match="outside the bundle"):
        load_bundle(out)


def test_replacing_a_bundle_is_atomic_and_non_bundles_are_kept(tmp_path):
    out = _make(tmp_path)
    first = load_bundle(out).manifest["files"]
    st = staging_dir(out)
    (st / "model.onnx").write_bytes(b"new")
    write_bundle(st, _manifest(), out)
    assert load_bundle(out).manifest["files"] != first
    assert sorted(p.name for p in out.parent.iterdir()) == ["toy-onnx-cpu"]
    other = tmp_path / "precious"
    other.mkdir()
    (other / "keep.txt").write_text("x")
    st = staging_dir(other)
    with pytest.raises(BundleError, match="not an edgekit bundle; refusing"):
        write_bundle(st, _manifest(), other)
    assert (other / "keep.txt").read_text() == "x"


def test_tar_round_trip(tmp_path):
    out = _make(tmp_path, tar=True)
    tar = out.with_name(out.name + ".tar")
    b = load_bundle(tar, extract_to=tmp_path / "x")
    assert b.manifest["name"] == "toy" and (b.root / "model.onnx").is_file()


def test_inspect_cli_prints_and_refuses_tampered(tmp_path):
    out = _make(tmp_path)
    res = run_cli("inspect", str(out))
    assert res.returncode == 0, res.stderr
    assert "toy" in res.stdout and "model.onnx" in res.stdout
    res = run_cli("inspect", str(out), "--json")
    assert json.loads(res.stdout)["name"] == "toy"
    (out / "tokenizer.json").write_text("[]")
    res = run_cli("inspect", str(out))
    assert res.returncode == 1 and "Traceback" not in res.stderr
    assert "file 'tokenizer.json' fails its sha256 check" in res.stderr
