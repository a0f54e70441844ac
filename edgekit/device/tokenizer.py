"""Text <-> token ids on the device, with the `tokenizers` library (tokenizer.json).

May import: stdlib, edgekit.core, tokenizers.
"""

from __future__ import annotations

from pathlib import Path

from edgekit.core.errors import BundleError


class TextTokenizer:
    """Wraps a `tokenizers.Tokenizer`; `encode` adds special tokens (e.g. BOS) as the model expects."""

    def __init__(self, tokenizer, eos_token_ids: list[int]):
        self._tok = tokenizer
        self.eos_token_ids = frozenset(eos_token_ids)

    @classmethod
    def from_file(cls, path: Path, eos_token_ids: list[int]) -> "TextTokenizer":
        from tokenizers import Tokenizer

        try:
            tok = Tokenizer.from_file(str(path))
        except Exception as exc:  # the Rust side raises a plain Exception for a bad file
            raise BundleError(f"{path}: cannot load tokenizer: {exc}") from None
        # some tokenizer.json files (BERT exports) pad/truncate to a fixed length; callers decide
        tok.no_padding()
        tok.no_truncation()
        return cls(tok, eos_token_ids)

    @property
    def raw(self):
        """The wrapped `tokenizers.Tokenizer` (token pieces, its decoder's kind)."""
        return self._tok

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return self._tok.encode(text, add_special_tokens=add_special_tokens).ids

    def decode(self, ids: list[int]) -> str:
        return self._tok.decode(ids, skip_special_tokens=True)

    def token_to_id(self, token: str) -> int | None:
        return self._tok.token_to_id(token)

    def completion_text(self, prompt_ids: list[int], new_ids: list[int], prompt_text: str | None = None) -> str:
        """Text of `new_ids` as it reads after the prompt.

        Decoding the new ids alone loses the leading space that SentencePiece-style tokenizers
        fold into the first piece, so decode prompt + new and cut the prompt's text off.
        """
        if prompt_text is None:
            prompt_text = self.decode(prompt_ids)
        full = self.decode(prompt_ids + new_ids)
        if full.startswith(prompt_text):
            return full[len(prompt_text):]
        return self.decode(new_ids)


class IncrementalText:
    """The text of generated ids as it reads after the prompt, one token at a time, at a cost per token
    independent of the length so far: each step decodes only a short window of ids.

    The window starts with the prompt's last few ids, so the first new piece keeps the leading space a
    SentencePiece-style decoder folds into it; a piece that ends in an incomplete UTF-8 character
    (byte fallback: "\\ufffd") is held until the character completes (at most `MAX_SPLIT` ids).
    Works with any tokenizer that has `decode(ids) -> str`."""

    CONTEXT = 4  # prompt ids kept before the first new one
    MAX_SPLIT = 4  # a UTF-8 character is at most 4 bytes: past that, "\ufffd" is real text

    def __init__(self, tokenizer, prompt_ids: list[int]):
        self._tok = tokenizer
        self._ids = list(prompt_ids[-self.CONTEXT:])  # window: [0, _read) already text, [_read, end) not yet
        self._read = len(self._ids)
        self._done = tokenizer.decode(self._ids)

    def add(self, token: int) -> str:
        """The text `token` adds (may be "" while a split character is pending)."""
        self._ids.append(token)
        text = self._tok.decode(self._ids)
        if len(self._ids) - self._read < self.MAX_SPLIT and (text.endswith("\ufffd")
                                                             or not text.startswith(self._done)):
            return ""
        return self._advance(text)

    def flush(self) -> str:
        """Whatever is still held back (an incomplete character at the end of generation)."""
        return self._advance(self._tok.decode(self._ids)) if len(self._ids) > self._read else ""

    def _advance(self, text: str) -> str:
        if text.startswith(self._done):
            piece = text[len(self._done):]
        else:  # a decoder that rewrites earlier text: the new ids alone
            piece = self._tok.decode(self._ids[self._read:])
        self._ids = self._ids[self._read:]  # the ids just turned into text become the next window's context
        self._read = len(self._ids)
        self._done = self._tok.decode(self._ids)
        return piece
