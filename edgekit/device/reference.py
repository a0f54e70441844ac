"""Reference data shipped in a bundle (`reference.npz`) and the figures a machine's kernels give on it.

At build time the verify stage stores what PyTorch (fp32) produced for the verify prompts and a few
held-out windows; on a device, `measure(...)` re-runs the bundle's model on the same token ids so
the figures can be compared with PyTorch's and with the workstation's (see reference_check.py).

Causal LMs (`kind` "causal"): prompt ids and PyTorch's greedy continuation ids per prompt, PyTorch's
top-k logits (indices + values) at every position of prompt + continuation, perplexity windows
(token ids) with PyTorch's summed negative log-likelihood in nats. Encoders (`kind` "encoder"):
input ids and PyTorch's unit-length embeddings. Logits are in the model's natural-log units;
perplexity is exp(mean nats per token).

The file is a compressed .npz holding only numeric and string arrays (loaded without pickle);
`meta` is one JSON string. May import: stdlib, numpy, edgekit.core, edgekit.device.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgekit.core.bundle import Bundle
from edgekit.core.errors import BundleError
from edgekit.device import quality
from edgekit.device.generate import drain, generate
from edgekit.device.sampling import Sampler

REFERENCE_FILE = "reference.npz"
FORMAT_VERSION = 1
KINDS = ("causal", "encoder")


@dataclass
class Reference:
    """`meta` (kind, prompts or sentences, PyTorch and workstation figures) and the arrays."""

    meta: dict
    arrays: dict

    @property
    def kind(self) -> str:
        return self.meta["kind"]

    def ragged(self, name: str) -> list[list[int]]:
        """The id lists stored flat as `name` with their lengths in `name`_lengths."""
        flat, lengths = self.arrays[name], self.arrays[name + "_lengths"]
        ends = np.cumsum(lengths)
        return [flat[e - n:e].tolist() for e, n in zip(ends, lengths)]


def flatten(lists: list[list[int]]) -> tuple[np.ndarray, np.ndarray]:
    """(concatenated ids as int32, lengths as int32): the ragged layout `Reference.ragged` reads."""
    flat = np.asarray([t for ids in lists for t in ids], dtype=np.int32)
    return flat, np.asarray([len(ids) for ids in lists], dtype=np.int32)


def save(path: Path, ref: Reference) -> int:
    """Write `ref` as a compressed .npz; returns its size in bytes."""
    if ref.kind not in KINDS:
        raise ValueError(f"reference kind must be one of {KINDS}, not {ref.kind!r}")
    meta = dict(ref.meta, format_version=FORMAT_VERSION)
    with open(path, "wb") as fh:
        np.savez_compressed(fh, meta=np.array(json.dumps(meta)), **ref.arrays)
    return Path(path).stat().st_size


def read(path: Path) -> Reference:
    """Load a reference file; BundleError naming the file when it is not one this edgekit reads."""
    try:
        with np.load(str(path), allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
        meta = json.loads(str(arrays.pop("meta")))
    except (OSError, ValueError, KeyError) as exc:
        raise BundleError(f"{path}: not a readable reference file ({exc})") from None
    if meta.get("format_version", 0) > FORMAT_VERSION or meta.get("kind") not in KINDS:
        raise BundleError(f"{path}: reference format {meta.get('format_version')} / kind {meta.get('kind')!r} "
                          "is not one this edgekit understands; upgrade edgekit")
    return Reference(meta, arrays)


def bundle_reference(bundle: Bundle) -> Reference | None:
    """The bundle's reference data, or None for a bundle built without it. The file must be listed
    in the manifest's files (load_bundle has then checked its sha256)."""
    rel = bundle.manifest.get("reference_file")
    if not rel:
        return None
    return read(bundle.file(rel))  # listed (so its sha256 was checked) and inside the bundle, or BundleError


def _teacher_forced(model, ref: Reference) -> dict:
    """max |logit diff| on PyTorch's top-k, and top-1 agreement along PyTorch's greedy tokens."""
    top_ids, top_vals = ref.arrays["topk_ids"], ref.arrays["topk_logits"]
    row, max_diff, matched, total = 0, 0.0, 0, 0
    for prompt, new in zip(ref.ragged("prompt_ids"), ref.ragged("continuation_ids")):
        seq = prompt + new
        logits = np.asarray(model.forward(seq, model.new_cache()), dtype=np.float32)
        ids, vals = top_ids[row:row + len(seq)], top_vals[row:row + len(seq)]
        row += len(seq)
        max_diff = max(max_diff, float(np.abs(np.take_along_axis(logits, ids, axis=-1) - vals).max()))
        if new:
            picked = logits[len(prompt) - 1:len(seq) - 1].argmax(-1)
            matched += int((picked == np.asarray(new)).sum())
            total += len(new)
    return {"max_logit_diff": round(max_diff, 6), "greedy_matched": matched, "greedy_total": total,
            "greedy_agreement": round(matched / total, 4) if total else 1.0}


def _greedy_prefix(model, tokenizer, ref: Reference) -> float:
    """Worst prompt's share of free-running greedy tokens that equal PyTorch's before the first
    difference (of the longer output)."""
    worst = 1.0
    for prompt, new in zip(ref.ragged("prompt_ids"), ref.ragged("continuation_ids")):
        got = drain(generate(model, tokenizer, prompt, ref.meta["greedy_tokens"], Sampler(0.0))).token_ids
        worst = min(worst, shared_prefix(new, got))
    return round(worst, 4)


def shared_prefix(ref: list[int], got: list[int]) -> float:
    """Leading tokens of `got` equal to `ref`'s, as a share of the longer of the two (1.0 when both are empty)."""
    longest = max(len(ref), len(got))
    same = next((i for i, (a, b) in enumerate(zip(ref, got)) if a != b), min(len(ref), len(got)))
    return same / longest if longest else 1.0


def measure_causal(model, tokenizer, ref: Reference) -> dict:
    """This machine's figures for a causal LM on `ref` (no pass/fail decision here)."""
    prompt_ids = ref.ragged("prompt_ids")
    figures = {"tokenizer_match": [tokenizer.encode(p) for p in ref.meta["prompts"]] == prompt_ids,
               **_teacher_forced(model, ref), "greedy_prefix": _greedy_prefix(model, tokenizer, ref)}
    wins = ref.arrays.get("window_ids")
    if wins is not None and len(wins):
        nll = sum(quality.nll_sum(model.forward(w[:-1].tolist(), model.new_cache()), w[1:]) for w in wins)
        figures["perplexity"] = round(math.exp(nll / (wins.shape[0] * (wins.shape[1] - 1))), 4)
    return figures


def measure_encoder(model, tokenizer, ref: Reference) -> dict:
    """This machine's figures for a sentence encoder on `ref`: cosine of each embedding to PyTorch's."""
    ids = ref.ragged("input_ids")
    got = np.asarray(model.embed(ids), dtype=np.float32)
    got = got / np.maximum(np.linalg.norm(got, axis=-1, keepdims=True), 1e-12)
    cos = (got * ref.arrays["embeddings"]).sum(-1)
    n = ref.meta["max_length"]
    return {"tokenizer_match": [tokenizer.encode(s)[:n] for s in ref.meta["sentences"]] == ids,
            "sentences": len(ids), "min_cosine": round(float(cos.min()), 6), "mean_cosine": round(float(cos.mean()), 6)}


def measure(model, tokenizer, ref: Reference) -> dict:
    """Figures for either kind of reference."""
    return (measure_causal if ref.kind == "causal" else measure_encoder)(model, tokenizer, ref)
