"""Full tier: `edgekit build --sign` on the real stories260k model, then `serve --trust` of its .tar over HTTP
(torch blocked), and the same .tar refused under another key."""

from __future__ import annotations

import tarfile

import httpx
import pytest
from conftest import run_cli
from test_build_serve import serving

pytestmark = pytest.mark.full


def test_built_with_sign_serves_under_trust_and_is_refused_under_another_key(stories_build, tmp_path, monkeypatch):
    pytest.importorskip("cryptography")
    monkeypatch.setenv("EDGEKIT_HOME", str(tmp_path / "home"))  # the .tar's extraction and the serve logs
    for name in ("release", "stranger"):
        assert run_cli("keygen", str(tmp_path / name)).returncode == 0
    out = tmp_path / "signed"
    res = run_cli("build", "--target", "onnx-cpu", "--recipe", "stories260k", "--out", str(out), "--tar",
                  "--work-dir", str(stories_build["stages"]), "--sign", str(tmp_path / "release"), cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "signed by ed25519:" in res.stdout
    tar = out.with_name("signed.tar")
    with tarfile.open(tar) as tf:
        assert "signed/manifest.sig" in tf.getnames()
    refused = run_cli("serve", str(tar), "--port", "0", "--trust", str(tmp_path / "stranger.pub"),
                      no_torch=True, timeout=120)
    assert refused.returncode == 1 and "which is not a trusted key" in refused.stderr, refused.stderr
    with serving(tar, "--trust", str(tmp_path / "release.pub"), "--power", "none") as base:
        r = httpx.post(base + "/v1/completions", json={"prompt": "Once upon a time", "max_tokens": 4,
                                                        "temperature": 0}, timeout=60)
        assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 4
