"""Token log-probabilities for `logprobs` / `top_logprobs` (OpenAI's completions and chat shapes).

A logprob is the natural log of the probability the *model* gave a token: log-softmax of the raw
logits at temperature 1, before repetition penalties, temperature, top-k and top-p (those shape the
sampling, not the model's distribution; OpenAI reports the model's figures the same way). Tokens are
shown as text (the token decoded alone) and as their raw UTF-8 bytes (a byte-level piece of a
multi-byte character decodes to U+FFFD alone; its bytes are still exact).
May import: stdlib, numpy, edgekit.device.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

MAX_COMPLETION_LOGPROBS = 5  # OpenAI's limit for /v1/completions `logprobs`
MAX_CHAT_TOP_LOGPROBS = 20  # OpenAI's limit for chat `top_logprobs`
_BYTE_PIECE = re.compile(r"<0x([0-9A-Fa-f]{2})>")  # SentencePiece byte fallback


@dataclass(frozen=True)
class TokenLogprob:
    """One generated token: its id, its logprob, and the `top` most likely (id, logprob) pairs."""

    token_id: int
    logprob: float
    top: tuple[tuple[int, float], ...] = ()


class LogprobRecorder:
    """Records each generated token's logprob (and the `top_n` best) from the logits it was chosen
    from; `take()` hands over the entries recorded since the last take (one streamed chunk's)."""

    def __init__(self, top_n: int):
        self.top_n = top_n
        self.entries: list[TokenLogprob] = []
        self._taken = 0

    def record(self, logits: np.ndarray, token: int) -> None:
        x = np.asarray(logits, dtype=np.float64).reshape(-1)
        shifted = x - x.max()
        logp = shifted - np.log(np.exp(shifted).sum())
        top: tuple = ()
        if self.top_n > 0:
            k = min(self.top_n, logp.size)
            best = np.argpartition(-logp, k - 1)[:k]
            best = best[np.argsort(-logp[best], kind="stable")]
            top = tuple((int(i), float(logp[i])) for i in best)
        self.entries.append(TokenLogprob(int(token), float(logp[token]), top))

    def take(self) -> list[TokenLogprob]:
        out, self._taken = self.entries[self._taken:], len(self.entries)
        return out


def _byte_decoder() -> dict[str, int]:
    """The inverse of the byte-level BPE alphabet (GPT-2 style): printable bytes stand for themselves,
    the others were shifted to code points from 256 on, in byte order."""
    printable = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    table, shift = {chr(b): b for b in printable}, 0
    for b in range(256):
        if b not in printable:
            table[chr(256 + shift)] = b
            shift += 1
    return table


BYTE_DECODER = _byte_decoder()


class TokenText:
    """Text and UTF-8 bytes of single tokens of an edgekit.device.tokenizer.TextTokenizer."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        raw = getattr(tokenizer, "raw", None)
        decoder = getattr(raw, "decoder", None)
        self.byte_level = type(decoder).__name__ == "ByteLevel"
        self.raw = raw

    def text(self, token_id: int) -> str:
        """The token's text as it reads inside a sequence (a SentencePiece word start keeps its space,
        which decoding the token alone would drop)."""
        piece = self.raw.id_to_token(token_id) if self.raw is not None else None
        if piece and not self.byte_level and "\u2581" in piece and not _BYTE_PIECE.fullmatch(piece):
            return piece.replace("\u2581", " ")
        return self.tokenizer.decode([token_id])

    def bytes(self, token_id: int) -> list[int]:
        piece = self.raw.id_to_token(token_id) if self.raw is not None else None
        if piece is not None:
            m = _BYTE_PIECE.fullmatch(piece)
            if m:
                return [int(m.group(1), 16)]
            if self.byte_level and all(c in BYTE_DECODER for c in piece):
                return [BYTE_DECODER[c] for c in piece]
        return list(self.text(token_id).encode("utf-8"))


def chat_logprobs(entries: list[TokenLogprob], names: TokenText) -> dict:
    """Chat shape: {"content": [{token, logprob, bytes, top_logprobs: [{token, logprob, bytes}]}]}."""
    def one(tid: int, lp: float) -> dict:
        return {"token": names.text(tid), "logprob": lp, "bytes": names.bytes(tid)}

    return {"content": [dict(one(e.token_id, e.logprob), top_logprobs=[one(t, lp) for t, lp in e.top])
                        for e in entries], "refusal": None}


def completion_logprobs(entries: list[TokenLogprob], names: TokenText, text_offset: int = 0) -> dict:
    """Legacy completions shape: {tokens, token_logprobs, top_logprobs (token -> logprob), text_offset}
    (offsets in characters of the completion text, from `text_offset`)."""
    tokens, offsets = [], []
    for e in entries:
        offsets.append(text_offset)
        tokens.append(names.text(e.token_id))
        text_offset += len(tokens[-1])
    return {"tokens": tokens, "token_logprobs": [e.logprob for e in entries],
            "top_logprobs": [{names.text(t): lp for t, lp in e.top} for e in entries], "text_offset": offsets}


def shaped(entries: list[TokenLogprob], names: TokenText, chat: bool, text_offset: int = 0) -> dict:
    """The `logprobs` object of a choice (or of one streamed chunk) in the chat or completions shape."""
    return chat_logprobs(entries, names) if chat else completion_logprobs(entries, names, text_offset)
