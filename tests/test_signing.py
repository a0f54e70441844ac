"""Signed bundles (fast tier): keygen, signing folders and .tar bundles, and the trust check that refuses
unsigned, tampered and foreign-key bundles, through the library and through `edgekit serve/inspect --trust`."""

from __future__ import annotations

import base64
import json
import stat
import tarfile
from pathlib import Path

import pytest
from conftest import run_cli
from test_bundle import _make, _manifest

from edgekit.core.bundle import MANIFEST, SIGNATURE, load_bundle, staging_dir, write_bundle
from edgekit.core.errors import BundleError, ConfigError
from edgekit.device import signing

pytest.importorskip("cryptography")


@pytest.fixture
def keys(tmp_path) -> dict:
    d = tmp_path / "keys"
    d.mkdir()
    out = {}
    for name in ("good", "other"):
        public, key_sha256 = signing.generate_key(d / name)
        out[name] = d / name
        out[name + ".pub"] = public
        out[name + ".sha"] = key_sha256
    return out


def _check(*pubs: Path):
    return signing.TrustCheck(signing.load_trusted(pubs))


def test_keygen_writes_a_private_key_only_its_owner_reads_and_never_overwrites(keys):
    assert stat.S_IMODE(keys["good"].stat().st_mode) == 0o600
    assert b"BEGIN PRIVATE KEY" in keys["good"].read_bytes()
    assert b"BEGIN PUBLIC KEY" in keys["good.pub"].read_bytes()
    assert signing.load_public_key(keys["good.pub"]).key_sha256 == keys["good.sha"] != keys["other.sha"]
    with pytest.raises(ConfigError, match="already exists"):
        signing.generate_key(keys["good"])


def test_signed_folder_passes_with_its_key_and_the_signature_is_plain_ed25519(tmp_path, keys):
    out = _make(tmp_path)
    key_sha256 = signing.sign_bundle(out, signing.load_private_key(keys["good"]))
    assert key_sha256 == keys["good.sha"]
    check = _check(keys["other.pub"], keys["good.pub"])
    b = load_bundle(out, check=check)
    assert check.signer.key_sha256 == keys["good.sha"]
    assert SIGNATURE not in {f["path"] for f in b.manifest["files"]}
    # independent check: Ed25519 over the manifest's exact bytes, with the public key from the .pub file
    from cryptography.hazmat.primitives.serialization import load_pem_public_key

    doc = json.loads((out / SIGNATURE).read_text())
    assert doc["algorithm"] == "ed25519" and doc["signed_file"] == MANIFEST
    load_pem_public_key(keys["good.pub"].read_bytes()).verify(base64.b64decode(doc["signature"]),
                                                              (out / MANIFEST).read_bytes())
    assert signing.describe(out).startswith(f"signed by ed25519:{keys['good.sha'][:16]} (signature matches")


def test_tampered_manifest_wrong_key_and_unsigned_are_refused(tmp_path, keys):
    out = _make(tmp_path)
    with pytest.raises(BundleError, match=r"bundle is unsigned \(no manifest.sig\)"):
        load_bundle(out, check=_check(keys["good.pub"]))
    assert signing.describe(out) == "unsigned"
    signing.sign_bundle(out, signing.load_private_key(keys["good"]))
    with pytest.raises(BundleError, match=f"signed by ed25519:{keys['good.sha'][:16]}, which is not a trusted key"):
        load_bundle(out, check=_check(keys["other.pub"]))
    m = out / MANIFEST
    m.write_text(m.read_text().replace('"name": "toy"', '"name": "tox"'))  # still valid JSON, files untouched
    load_bundle(out)  # without --trust: the sha256 checks alone still pass
    with pytest.raises(BundleError, match="bad signature: manifest.json does not match"):
        load_bundle(out, check=_check(keys["good.pub"]))
    assert "signature INVALID" in signing.describe(out)


def test_a_key_substituted_inside_manifest_sig_does_not_help_a_forger(tmp_path, keys):
    """A forger re-signs a modified manifest with their own key but writes the trusted key's id into
    manifest.sig: the check uses the trusted key, never the one the bundle brings."""
    out = _make(tmp_path)
    forger = signing.load_private_key(keys["other"])
    doc = json.loads(signing.signature_file(forger, (out / MANIFEST).read_bytes()))
    doc["key_sha256"] = keys["good.sha"]
    (out / SIGNATURE).write_text(json.dumps(doc))
    with pytest.raises(BundleError, match="bad signature"):
        load_bundle(out, check=_check(keys["good.pub"]))


def test_malformed_signature_file_is_one_clear_error(tmp_path, keys):
    out = _make(tmp_path)
    (out / SIGNATURE).write_text('{"format": "edgekit-manifest-signature", "algorithm": "rsa"}')
    with pytest.raises(BundleError, match="manifest.sig is not a valid signature file"):
        load_bundle(out, check=_check(keys["good.pub"]))
    doc = json.loads(signing.signature_file(signing.load_private_key(keys["good"]), (out / MANIFEST).read_bytes()))
    doc["key_sha256"] = "0123\nerror: all fine" + "0" * 44  # a hostile id must not reach a message
    (out / SIGNATURE).write_text(json.dumps(doc))
    with pytest.raises(BundleError, match="not a valid signature file") as exc:
        load_bundle(out, check=_check(keys["good.pub"]))
    assert "\n" not in str(exc.value)


def test_tar_bundle_signed_in_place_and_checked_after_extraction(tmp_path, keys):
    out = _make(tmp_path, tar=True)
    tar = out.with_name(out.name + ".tar")
    signing.sign_bundle(tar, signing.load_private_key(keys["good"]))
    with tarfile.open(tar) as tf:
        assert f"{out.name}/{SIGNATURE}" in tf.getnames()
    assert not [p for p in tar.parent.iterdir() if p.name.startswith(".")], "signing left a work folder"
    check = _check(keys["good.pub"])
    b = load_bundle(tar, extract_to=tmp_path / "x", check=check)
    assert b.manifest["name"] == "toy" and check.signer is not None
    with pytest.raises(BundleError, match="not a trusted key"):
        load_bundle(tar, extract_to=tmp_path / "y", check=_check(keys["other.pub"]))


def test_write_bundle_signs_folder_and_tar_and_drops_a_stale_signature(tmp_path, keys):
    key = signing.load_private_key(keys["good"])
    out = tmp_path / "dist" / "toy"
    st = staging_dir(out)
    (st / "model.onnx").write_bytes(b"m" * 100)
    (st / SIGNATURE).write_text("stale")  # e.g. copied from an older bundle: it signed another manifest
    b = write_bundle(st, _manifest(), out, tar=True, sign=lambda raw: signing.signature_file(key, raw))
    assert [f["path"] for f in b.manifest["files"]] == ["model.onnx"]
    load_bundle(out, check=_check(keys["good.pub"]))
    load_bundle(out.with_name("toy.tar"), extract_to=tmp_path / "x", check=_check(keys["good.pub"]))
    st = staging_dir(out)
    (st / "model.onnx").write_bytes(b"n" * 100)
    (st / SIGNATURE).write_bytes((out / SIGNATURE).read_bytes())
    write_bundle(st, _manifest(), out)  # rewritten unsigned: the old signature must not survive
    assert not (out / SIGNATURE).exists()


def test_trust_folder_and_key_file_mistakes(tmp_path, keys):
    assert {k.key_sha256 for k in signing.load_trusted([keys["good"].parent])} == {keys["good.sha"], keys["other.sha"]}
    with pytest.raises(ConfigError, match="is a private key; --trust takes public keys"):
        signing.load_trusted([keys["good"]])
    with pytest.raises(ConfigError, match="holds no"):
        (tmp_path / "empty").mkdir()
        signing.load_trusted([tmp_path / "empty"])
    with pytest.raises(ConfigError, match="is a public key; signing needs the private key"):
        signing.load_private_key(keys["good.pub"])
    (tmp_path / "junk.pub").write_text("hello")
    with pytest.raises(ConfigError, match="junk.pub is not a readable public key"):
        signing.load_trusted([tmp_path / "junk.pub"])


def _one_error_line(res) -> str:
    assert res.returncode == 1, res.stderr
    assert "Traceback" not in res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1, res.stderr
    return lines[0]


def test_cli_sign_inspect_and_serve_refusals(tmp_path, keys):
    out = _make(tmp_path, tar=True)
    tar = out.with_name(out.name + ".tar")
    env = {"EDGEKIT_HOME": str(tmp_path / "home")}
    line = _one_error_line(run_cli("serve", str(out), "--port", "0", "--trust", str(keys["good.pub"]),
                                   no_torch=True, env=env, timeout=60))
    assert "bundle is unsigned" in line
    res = run_cli("sign", str(tar), "--key", str(keys["good"]), env=env, timeout=60)
    assert res.returncode == 0 and f"ed25519:{keys['good.sha'][:16]}" in res.stdout, res.stderr
    res = run_cli("inspect", str(tar), "--trust", str(keys["good.pub"]), no_torch=True, env=env, timeout=60)
    assert res.returncode == 0, res.stderr
    assert f"signature  signed by ed25519:{keys['good.sha'][:16]}, verified with trusted key" in res.stdout
    res = run_cli("inspect", str(out), no_torch=True, env=env, timeout=60)  # no --trust: unchanged, says so
    assert res.returncode == 0 and "signature  unsigned" in res.stdout, res.stderr
    # EDGEKIT_TRUST (as a systemd unit would set it) names the keys too; the wrong one refuses the .tar
    line = _one_error_line(run_cli("serve", str(tar), "--port", "0", no_torch=True, timeout=60,
                                   env=dict(env, EDGEKIT_TRUST=str(keys["other.pub"]))))
    assert "which is not a trusted key" in line and "edgekit serve:" not in line
    run_cli("sign", str(out), "--key", str(keys["good"]), env=env, timeout=60)
    (out / MANIFEST).write_text((out / MANIFEST).read_text().replace('"toy"', '"tox"'))
    line = _one_error_line(run_cli("serve", str(out), "--port", "0", "--trust", str(keys["good.pub"]),
                                   no_torch=True, env=env, timeout=60))
    assert line.startswith("error: ") and "bad signature" in line
    line = _one_error_line(run_cli("verify", str(out), "--trust", str(keys["other.pub"]), env=env, timeout=60))
    assert "not a trusted key" in line
