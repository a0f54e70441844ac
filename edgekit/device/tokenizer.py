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

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return self._tok.encode(text, add_special_tokens=add_special_tokens).ids

    def decode(self, ids: list[int]) -> str:
        return self._tok.decode(ids, skip_special_tokens=True)

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
