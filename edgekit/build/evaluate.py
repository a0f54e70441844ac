"""`edgekit eval`: perplexity (causal LMs) or STS-B Spearman (encoders) of a model or a bundle.

A bundle is evaluated through the device runtime (numpy + onnxruntime); a Hugging Face folder,
GGUF file or teacher source through PyTorch. Both tokenise the same text without special tokens
and cut the same windows, so numbers for a bundle and its source model are comparable.
May import: stdlib, edgekit, torch/transformers inside functions.
"""

from __future__ import annotations

from pathlib import Path

from edgekit.core.bundle import MANIFEST
from edgekit.core.errors import ConfigError


def default_eval_texts(recipe, skip_missing: bool = False) -> tuple[dict[str, str], list[str]]:
    """Held-out tails of the recipe's training files (never trained on) plus its eval files.

    Returns ({name: text}, references not found); missing files raise unless `skip_missing`.
    """
    from edgekit.build import textdata

    texts, missing = {}, []
    frac = recipe.data["distill"]["eval_fraction"]
    for refs, tail in ((recipe.data["data"]["train"], True), (recipe.data["data"]["eval"], False)):
        for ref in refs:
            try:
                files = textdata.expand_paths([ref])
            except ConfigError:
                if not skip_missing:
                    raise
                missing.append(ref)
                continue
            for f in files:
                text = textdata.read_text(f)
                if tail:
                    texts[f.name + " (held-out tail)"] = textdata.split_heldout(text, frac)[1]
                else:
                    texts[f.name] = text
    return {k: v for k, v in texts.items() if v.strip()}, missing


def _is_bundle(path: Path) -> bool:
    return (path / MANIFEST).is_file() or (path.is_file() and path.suffix == ".tar")


def eval_causal(model_ref: str, texts: dict[str, str], max_tokens: int, window: int) -> dict:
    """{text name: {"perplexity", "tokens"}} for a bundle (device runtime) or a model (PyTorch)."""
    from edgekit.device import quality

    path = Path(model_ref).expanduser()
    results = {}
    if path.exists() and _is_bundle(path):
        from edgekit.device.runtime import load

        loaded = load(path, allow_cpu_fallback=True)  # the bundle's numbers, wherever its kernels run here
        model, encode = loaded.model, lambda t: loaded.tokenizer.encode(t, add_special_tokens=False)
        run = lambda wins: quality.perplexity(model, wins)  # noqa: E731
        kind = (f"bundle ({loaded.bundle.manifest['model']['precision']}, {loaded.bundle.manifest['model']['runtime']}"
                f" on {loaded.accelerator})")
    else:
        import torch

        from edgekit.build.teacher import load_causal_lm, resolve_teacher, teacher_from_cli
        from edgekit.build.textdata import perplexity

        model, tok = load_causal_lm(resolve_teacher(teacher_from_cli(model_ref)))
        encode = lambda t: tok(t, add_special_tokens=False, verbose=False).input_ids  # noqa: E731
        run = lambda wins: perplexity(model, torch.tensor(wins))  # noqa: E731
        kind = "PyTorch fp32"
    for name, text in texts.items():
        wins = quality.windows(encode(text)[: max_tokens + 1], window)
        if not wins:
            raise ConfigError(f"{name}: fewer than {window + 1} tokens to evaluate")
        results[name] = {"perplexity": round(run(wins), 4), "tokens": sum(len(w) - 1 for w in wins)}
    return {"model": str(model_ref), "evaluated_with": kind, "perplexity": results}
