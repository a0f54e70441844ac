"""Text for distillation and evaluation: files -> train / held-out split -> token windows.

Each file is normalised (CRLF -> LF, `<|endoftext|>` separators -> blank lines) and split at a
paragraph boundary: the first (1 - eval_fraction) of its characters train, the rest is held
out. The two parts never share a paragraph, so evaluation text is never trained on.
May import: stdlib; torch inside the functions that build tensors (so reading and splitting text
works on a device install, e.g. `edgekit eval BUNDLE`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from edgekit.core.errors import ConfigError
from edgekit.core.paths import resolve_data_ref

if TYPE_CHECKING:
    import torch


def expand_paths(refs: list[str]) -> list[Path]:
    """Files for recipe refs or --data arguments (a directory means its *.txt/*.raw files)."""
    out: list[Path] = []
    for ref in refs:
        p = resolve_data_ref(ref)
        if p.is_dir():
            found = sorted(q for q in p.rglob("*") if q.suffix in (".txt", ".raw") and q.is_file())
            if not found:
                raise ConfigError(f"data folder {p} holds no .txt or .raw files")
            out += found
        elif p.is_file():
            out.append(p)
        else:
            raise ConfigError(f"data file not found: {p}")
    return out


def read_text(path: Path) -> str:
    raw = path.read_text(encoding="utf-8", errors="replace").replace("\r\n", "\n")
    return raw.replace("<|endoftext|>", "\n\n")


def split_heldout(text: str, eval_fraction: float) -> tuple[str, str]:
    """(train, held-out) split at the first paragraph break after (1 - eval_fraction) of the text."""
    if eval_fraction <= 0:
        return text, ""
    cut = int(len(text) * (1 - eval_fraction))
    brk = text.find("\n\n", cut)
    if brk < 0:
        brk = text.find("\n", cut)
    if brk < 0:
        brk = cut
    return text[:brk], text[brk:].lstrip("\n")


def windows(ids: list[int], length: int, max_windows: int | None = None) -> "torch.Tensor":
    """Non-overlapping windows of `length` + 1 tokens (input + shifted target), [N, length+1];
    the same windows the device side cuts (edgekit.device.quality.windows)."""
    import torch

    from edgekit.device.quality import windows as cut

    wins = cut(ids, length, max_windows)
    if not wins:
        raise ConfigError(f"text too short: {len(ids)} tokens for one window of {length}")
    return torch.tensor(wins)


@dataclass
class TextData:
    """Tokenised training windows and per-file held-out evaluation windows."""

    train: "torch.Tensor"  # [N, seq_len + 1]
    evals: dict[str, "torch.Tensor"]  # file name -> [M, eval_len + 1]
    train_tokens: int
    sources: list[str]


def prepare(tokenizer, files: list[Path], seq_len: int, eval_fraction: float = 0.05,
            eval_tokens: int = 4096, eval_len: int = 256, eval_files: list[Path] | None = None) -> TextData:
    """Tokenise `files` for training (held-out tails split off) and evaluation."""
    train_ids: list[int] = []
    evals: dict[str, torch.Tensor] = {}
    for f in files:
        train, held = split_heldout(read_text(f), eval_fraction)
        train_ids += tokenizer(train, add_special_tokens=False, verbose=False).input_ids
        if held:
            ids = tokenizer(held, add_special_tokens=False, verbose=False).input_ids
            evals[f.name] = windows(ids, eval_len, max(1, eval_tokens // eval_len))
    for f in eval_files or []:
        ids = tokenizer(read_text(f), add_special_tokens=False, verbose=False).input_ids
        evals[f.name] = windows(ids, eval_len, max(1, eval_tokens // eval_len))
    return TextData(train=windows(train_ids, seq_len), evals=evals, train_tokens=len(train_ids),
                    sources=[str(f) for f in files])


def perplexity(model, wins: "torch.Tensor", batch_size: int = 8) -> float:
    """exp(mean next-token NLL) of a causal LM over windows [N, L+1] (each window independent)."""
    import torch

    with torch.no_grad():
        return _perplexity(torch, model, wins, batch_size)


def _perplexity(torch, model, wins, batch_size: int) -> float:
    device = next(model.parameters()).device
    nll, count = 0.0, 0
    for i in range(0, len(wins), batch_size):
        b = wins[i: i + batch_size].to(device)
        logits = model(input_ids=b[:, :-1]).logits.float()
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), b[:, 1:].reshape(-1),
                                                 reduction="sum")
        nll += float(loss)
        count += b[:, 1:].numel()
    return float(torch.exp(torch.tensor(nll / count)))
