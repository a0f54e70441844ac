"""Every file the device opens must be listed (so sha256-checked) and inside the bundle: a manifest
that names `../x`, or leaves a file the runtime opens unlisted, is refused by `inspect`, `verify`
and `serve`, naming the path (fast tier, the real CLI entry point)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from edgekit.cli import main
from edgekit.core.bundle import load_bundle, referenced_files, staging_dir, write_bundle
from edgekit.core.errors import BundleError

from fakes import word_tokenizer_file


def _bundle(tmp_path: Path) -> Path:
    st = staging_dir(tmp_path / "b")
    (st / "model.json").write_text("{}")
    (st / "tables.npz").write_bytes(b"not used")
    word_tokenizer_file(st / "tokenizer.json")
    (st / "generation.json").write_text(json.dumps({"max_new_tokens": 8}))
    manifest = {"schema_version": 1, "edgekit_version": "test", "name": "toy", "task": "text-generation",
                "target": {"name": "fake-target"},
                "model": {"file": "model.json", "format": "onnx", "precision": "int8", "runtime": "onnxruntime",
                          "max_sequence_length": 64},
                "signature": {"host_file": "tables.npz"},
                "tokenizer": {"file": "tokenizer.json", "eos_token_ids": [1]}, "generation_file": "generation.json"}
    write_bundle(st, manifest, tmp_path / "b")
    (tmp_path / "x").write_text("{}")  # a file outside the bundle, as an attacker would point at
    return tmp_path / "b"


def _edit(bundle: Path, change) -> None:
    m = json.loads((bundle / "manifest.json").read_text())
    change(m)
    (bundle / "manifest.json").write_text(json.dumps(m))


def _unlist(name):
    return lambda m: m.update(files=[f for f in m["files"] if f["path"] != name])


CASES = {
    "model ../x": (lambda m: m["model"].update(file="../x"), "'../x'"),
    "model absolute": (lambda m: m["model"].update(file="/etc/passwd"), "'/etc/passwd'"),
    "tokenizer ../x": (lambda m: m["tokenizer"].update(file="../x"), "'../x'"),
    "host tables ../x": (lambda m: m["signature"].update(host_file="../x"), "'../x'"),
    "segment ../../x": (lambda m: m["signature"].update(segments=[{"file": "../../x"}]), "'../../x'"),
    "files: []": (lambda m: m.update(files=[]), "'model.json'"),
    "tokenizer unlisted": (_unlist("tokenizer.json"), "'tokenizer.json'"),
    "generation unlisted": (_unlist("generation.json"), "'generation.json'"),
    "host tables unlisted": (_unlist("tables.npz"), "'tables.npz'"),
    "compiled model unlisted": (lambda m: m["model"].update(accelerated_files=["model_edgetpu.tflite"]),
                                "'model_edgetpu.tflite'"),
}


def _run(capsys, *args) -> tuple[int, str]:
    with pytest.raises(SystemExit) as exc:
        main(list(args))
    return exc.value.code, capsys.readouterr().err


@pytest.mark.parametrize("case", list(CASES))
def test_inspect_verify_and_serve_refuse_unverified_or_outside_files(tmp_path, capsys, case):
    bundle = _bundle(tmp_path)
    change, named = CASES[case]
    _edit(bundle, change)
    for args in (["inspect", str(bundle)], ["verify", str(bundle)],
                 ["serve", str(bundle), "--power", "none", "--port", "0", "--request-log", str(tmp_path / "r.jsonl")]):
        code, err = _run(capsys, *args)
        assert code == 1, (args, err)
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ") and named in lines[0], (args, err)
        assert "outside the bundle" in lines[0] or "not among the manifest's checked files" in lines[0]


def test_the_untouched_bundle_passes_and_names_every_file_it_opens(tmp_path, capsys):
    bundle = _bundle(tmp_path)
    main(["inspect", "--json", str(bundle)])
    assert json.loads(capsys.readouterr().out)["name"] == "toy"
    b = load_bundle(bundle)
    assert referenced_files(b.manifest) == ["model.json", "tokenizer.json", "generation.json", "tables.npz"]
    assert b.model_file == bundle / "model.json" and b.file("generation.json") == bundle / "generation.json"
    with pytest.raises(BundleError, match="'manifest.json'"):
        b.file("manifest.json")  # present in the folder but not a checked file


def test_a_listed_symlink_leading_out_of_the_bundle_is_refused(tmp_path):
    bundle = _bundle(tmp_path)
    (bundle / "generation.json").unlink()
    (bundle / "generation.json").symlink_to(tmp_path / "x")
    with pytest.raises(BundleError, match="outside the bundle"):
        load_bundle(bundle)
