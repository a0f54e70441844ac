"""`edgekit eval`: held-out perplexity, chat-answer perplexity and top-1 agreement, SST-2 accuracy
(causal LMs) or STS-B Spearman (encoders) of a model or a bundle.

A bundle is evaluated through the device runtime (numpy + onnxruntime / LiteRT); a Hugging Face folder,
GGUF file or teacher source through PyTorch. Both sides are scorers with one interface (logits of every
row for a list of ids) fed the same ids (the same text without special tokens, the same windows, chat
examples from chat_examples.example_ids), and the metrics are the same numpy code
(edgekit.device.chat_quality, edgekit.device.sst2), so numbers for a bundle and its source compare.
May import: stdlib, edgekit, torch/transformers inside functions.
"""

from __future__ import annotations

from pathlib import Path

from edgekit.core.bundle import MANIFEST
from edgekit.core.errors import ConfigError
from edgekit.device.chat_quality import Scorer, end_of_turn_id


def default_eval_texts(recipe, skip_missing: bool = False) -> tuple[dict[str, str], list[str]]:
    """Held-out tails of the recipe's training files (never trained on) plus its eval files.

    Returns ({name: text}, references not found); missing files raise unless `skip_missing`.
    """
    from edgekit.workshop import textdata

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


def default_chat_examples(recipe) -> Path | None:
    """The recipe's held-out chat examples (its held-out prompts with the teacher's answers, made by
    the distillation's chat data step on this machine), or None for a recipe without chat data or
    before that data exists."""
    if recipe.task != "text-generation" or not recipe.data["chat"]["enabled"]:
        return None
    from edgekit.workshop.chatdata import heldout_file
    from edgekit.workshop.distill_settings import chat_settings_from_recipe, settings_from_recipe

    return heldout_file(chat_settings_from_recipe(recipe, settings_from_recipe(recipe)))


def _is_bundle(path: Path) -> bool:
    return (path / MANIFEST).is_file() or (path.is_file() and path.suffix == ".tar")


class TorchScorer(Scorer):
    """A Hugging Face causal LM (PyTorch fp32) with the scorer interface of edgekit.device.scorer."""

    def __init__(self, model, tokenizer, kind: str = "PyTorch fp32"):
        self.model, self.tok, self.kind = model, tokenizer, kind
        self.chat_template = getattr(tokenizer, "chat_template", None) or None
        self.bos_token = tokenizer.bos_token if isinstance(tokenizer.bos_token, str) else ""
        self.eos_token = tokenizer.eos_token if isinstance(tokenizer.eos_token, str) else ""
        eos = model.generation_config.eos_token_id if model.generation_config is not None else None
        eos = [eos] if isinstance(eos, int) else list(eos or [])
        self.end_of_turn_id = end_of_turn_id(self.eos_token, tokenizer.convert_tokens_to_ids, eos)

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        return self.tok(text, add_special_tokens=add_special_tokens, verbose=False).input_ids

    def logits(self, ids: list[int]):
        import torch

        with torch.no_grad():
            return self.model(input_ids=torch.tensor([list(ids)])).logits[0].float().numpy()

    def continuation_logits(self, prefix: list[int], continuations: list[list[int]]) -> list:
        """The prefix runs once; each continuation reads a copy of its cache."""
        import copy

        import numpy as np
        import torch

        with torch.no_grad():
            out = self.model(input_ids=torch.tensor([list(prefix)]), use_cache=True)
            last = out.logits[0, -1:].float().numpy()
            key = "cache" if "cache" in out else "past_key_values"  # renamed within transformers 5
            rows = []
            for c in continuations:
                if len(c) == 1:
                    rows.append(last)
                    continue
                more = self.model(input_ids=torch.tensor([list(c[:-1])]), use_cache=True,
                                  **{key: copy.deepcopy(out[key])}).logits[0].float().numpy()
                rows.append(np.concatenate([last, more]))
        return rows

    def perplexity(self, wins: list[list[int]]) -> float:
        import torch

        from edgekit.workshop.textdata import perplexity

        return perplexity(self.model, torch.tensor(wins))


def open_scorer(model_ref: str, recipe=None):
    """A scorer for a bundle (device runtime) or a model (PyTorch); `recipe` lets MODEL be "recipe",
    the recipe's teacher (e.g. SmolLM2-135M-Instruct, a Q4_1 GGUF dequantized to fp32)."""
    path = Path(model_ref).expanduser()
    if path.exists() and _is_bundle(path):
        from edgekit.device.runtime import load
        from edgekit.device.scorer import BundleScorer

        return BundleScorer(load(path, allow_cpu_fallback=True))  # the bundle's numbers, wherever its kernels run here
    from edgekit.workshop.teacher import load_causal_lm, resolve_teacher

    if model_ref == "recipe" and recipe is not None and not path.exists():
        t = recipe.data["teacher"]
        folder = resolve_teacher(t["source"], t.get("file", ""), t.get("sha256", ""))
        gguf = Path(t.get("file", "")).name if t.get("file", "").endswith(".gguf") else ""
        kind = f"PyTorch fp32, recipe teacher {t['source']}" + (f", dequantized from {gguf}" if gguf else "")
        return TorchScorer(*load_causal_lm(folder), kind=kind)
    folder = resolve_teacher(model_source(model_ref))
    return TorchScorer(*load_causal_lm(folder), kind="PyTorch fp32")


def model_source(model_ref: str) -> str:
    """The teacher-source form of a model reference; a missing path is one clear error (checked
    before any model loads)."""
    from edgekit.workshop.teacher import teacher_from_cli

    try:
        return teacher_from_cli(model_ref)
    except ConfigError:
        raise ConfigError(f"model not found: {model_ref} (expected a bundle folder or .tar, a Hugging Face "
                          "folder, a .gguf file, a KIND:VALUE teacher source or a hub id ORG/NAME)") from None


def heldout_perplexity(scorer, texts: dict[str, str], max_tokens: int, window: int) -> dict:
    """{text name: {"perplexity", "tokens"}}: the same windows for every scorer."""
    from edgekit.device import quality

    results = {}
    window = min(window, max_tokens)  # --tokens 64 with the default window of 256: one window of 64
    for name, text in texts.items():
        ids = scorer.encode(text)
        wins = quality.windows(ids[: max_tokens + 1], window)
        if not wins:
            raise ConfigError(f"{name}: {len(ids)} tokens, fewer than the {window + 1} one window needs "
                              "(lower --window)")
        results[name] = {"perplexity": round(scorer.perplexity(wins), 4), "tokens": sum(len(w) - 1 for w in wins)}
    return results


def eval_causal(model_ref: str, texts: dict[str, str], max_tokens: int, window: int, recipe=None,
                chat: list[dict] | None = None, sst2: list | None = None, sst2_phrasing: str | None = None) -> dict:
    """Perplexity per text, plus chat metrics for `chat` examples and SST-2 accuracy on `sst2` rows."""
    scorer = open_scorer(model_ref, recipe)
    out = {"model": str(model_ref), "evaluated_with": scorer.kind,
           "perplexity": heldout_perplexity(scorer, texts, max_tokens, window)}
    if chat:
        from edgekit.device.chat_quality import chat_metrics

        out["chat"] = chat_metrics(scorer, chat)
    if sst2:
        from edgekit.device.sst2 import phrasings_for, sst2_accuracy

        scored = [sst2_accuracy(scorer, sst2, name) for name in phrasings_for(scorer, sst2_phrasing)]
        out["sst2"] = scored[0]  # the model's own phrasing first; the others (plain, for a chat model) after
        if scored[1:]:
            out["sst2_more"] = scored[1:]
    return out
