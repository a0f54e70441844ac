"""Reference data for the bundle (reference.npz, see edgekit/device/reference.py), made in the verify stage.

PyTorch (fp32) runs the verify prompts and a few held-out windows; the exported model's figures on
the same data are then measured with the device code itself (reference.measure), so a device's
`edgekit verify` compares like with like: "workstation export" vs "this device". Kept small on
purpose: all verify prompts, top-k logits only, WINDOWS windows of up to WINDOW_TOKENS tokens, and
at most MAX_SENTENCES encoder sentences. Logits in natural-log units, perplexity exp(mean nats).
May import: stdlib, numpy, torch, edgekit.core, edgekit.device, edgekit.workshop.
"""

from __future__ import annotations

import math
import platform
from pathlib import Path

import numpy as np
import torch

from edgekit.workshop.verify import TOP_K, eval_token_ids, torch_greedy
from edgekit.device import quality
from edgekit.device.reference import Reference, flatten, measure, save
from edgekit.device.reference_check import judge
from edgekit.device.runtimes import status

WINDOW_TOKENS = 128  # tokens scored per window (plus one target)
WINDOWS = 2  # held-out windows: 256 scored tokens keep a Pi's check to seconds
MAX_SENTENCES = 24


def _topk(torch_model, seq: list[int]) -> tuple[np.ndarray, np.ndarray]:
    with torch.no_grad():
        logits = torch_model(torch.tensor([seq])).logits[0].float()
    vals, ids = logits.topk(TOP_K, dim=-1)
    return ids.numpy().astype(np.int32), vals.numpy().astype(np.float32)


def _windows(torch_model, device_tokenizer, eval_texts: list[str], max_seq: int) -> tuple[np.ndarray, dict] | None:
    window = min(WINDOW_TOKENS, max_seq - 1)
    ids = eval_token_ids(device_tokenizer, eval_texts, WINDOWS * window + 1)
    wins = np.asarray(quality.windows(ids, window, WINDOWS), dtype=np.int32)
    if not len(wins):
        return None
    with torch.no_grad():
        logits = torch_model(torch.tensor(wins[:, :-1], dtype=torch.long)).logits.float().numpy()
    nll = sum(quality.nll_sum(rows, targets) for rows, targets in zip(logits, wins[:, 1:]))
    tokens = int(wins[:, 1:].size)
    return wins, {"perplexity": round(math.exp(nll / tokens), 4), "tokens": tokens, "nll_nats": round(nll, 4)}


def causal_reference(torch_model, hf_tokenizer, device_tokenizer, prompts: list[str], greedy_tokens: int,
                     eval_texts: list[str], max_seq: int) -> Reference:
    """PyTorch's greedy continuations and top-k logits on `prompts`, and its perplexity windows."""
    eos = set(device_tokenizer.eos_token_ids)
    prompt_ids, new_ids, top_ids, top_vals = [], [], [], []
    for prompt in prompts:
        ids = hf_tokenizer(prompt).input_ids
        new = torch_greedy(torch_model, ids, greedy_tokens, eos)
        t_ids, t_vals = _topk(torch_model, ids + new)
        prompt_ids.append(ids), new_ids.append(new), top_ids.append(t_ids), top_vals.append(t_vals)
    flat_p, len_p = flatten(prompt_ids)
    flat_n, len_n = flatten(new_ids)
    arrays = {"prompt_ids": flat_p, "prompt_ids_lengths": len_p, "continuation_ids": flat_n,
              "continuation_ids_lengths": len_n, "topk_ids": np.concatenate(top_ids),
              "topk_logits": np.concatenate(top_vals)}
    meta = {"kind": "causal", "prompts": list(prompts), "top_k": TOP_K, "greedy_tokens": greedy_tokens}
    scored = _windows(torch_model, device_tokenizer, eval_texts, max_seq) if eval_texts else None
    if scored is not None:
        arrays["window_ids"], meta["pytorch"] = scored
    return Reference(meta, arrays)


def encoder_reference(torch_model, tokenizer, sentences: list[str], max_len: int) -> Reference:
    """Input ids and PyTorch's unit-length embeddings of the first MAX_SENTENCES `sentences`."""
    from edgekit.workshop.encoder import embed

    sentences = list(sentences[:MAX_SENTENCES])
    ids = [tokenizer(s, truncation=True, max_length=max_len).input_ids for s in sentences]
    with torch.no_grad():
        emb = torch.nn.functional.normalize(embed(torch_model, tokenizer, sentences, max_len=max_len), dim=-1)
    flat, lengths = flatten(ids)
    return Reference({"kind": "encoder", "sentences": sentences, "max_length": max_len},
                     {"input_ids": flat, "input_ids_lengths": lengths, "embeddings": emb.numpy().astype(np.float32)})


def _runtime_label(runtime: str) -> str:
    st = status(runtime)
    return f"{runtime} ({st.package} {st.version})" if st.version else runtime


def write_reference(ref: Reference, device_model, device_tokenizer, runtime: str, limits: dict, path: Path,
                    log=print) -> dict:
    """Measure the exported model on `ref` with the device code (the workstation's figures), store
    them in it, write `path`; returns the metrics to record (bytes, workstation verdict)."""
    figures = measure(device_model, device_tokenizer, ref)
    ref.meta["workstation"] = {"machine": platform.machine(), "runtime": _runtime_label(runtime), "figures": figures}
    size = save(path, ref)
    checks = judge(figures, ref, limits)
    fails = [c["text"] for c in checks if c["passed"] is False]
    for text in fails:  # the full verify passed or failed on more data; this is the device check's view
        log(f"warning: the workstation export misses a limit on the bundle's reference data: {text}")
    return {"file": path.name, "bytes": size, "workstation_passed": not fails, "workstation": figures}
