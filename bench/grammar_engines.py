"""Grammar engines side by side on one tokenizer: llguidance vs outlines-core (issue 16's choice).

    python bench/grammar_engines.py TOKENIZER_JSON [--rounds 5]

Both engines walk the same token sequence (a JSON document valid against a small schema, tokenized by
the model's tokenizer) and compute the full next-token mask at every step, written as a bitmask and
applied to [V] logits with numpy (the same application for both). Reported: one-off costs (the
engine's vocabulary/tokenizer view; outlines-core's per-schema index) and seconds per token (best
round, mask + apply + advance). Needs both packages (pip install llguidance outlines-core); prints JSON.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

SCHEMA = {"type": "object", "properties": {"name": {"type": "string", "maxLength": 20}, "age": {"type": "integer"},
          "tags": {"type": "array", "items": {"type": "string"}}}, "required": ["name", "age", "tags"],
          "additionalProperties": False}
TEXT = '{"name":"Ada Lovelace","age":36,"tags":["math","engines","poetry"]}'


def _apply(bits: np.ndarray, logits: np.ndarray) -> None:
    allowed = np.unpackbits(bits.view(np.uint8), bitorder="little")[: logits.shape[0]].astype(bool)
    logits[~allowed] = -np.inf


def _walk(ids, vocab, eos, fill, advance) -> float:
    """Seconds per token for one pass: mask, check the next token is allowed, apply, advance."""
    bits, logits = np.zeros((vocab + 31) // 32, dtype=np.int32), np.zeros(vocab, np.float32)
    t = time.perf_counter()
    for i in ids + [eos]:
        fill(bits)
        assert (bits[i // 32] >> (i % 32)) & 1, f"token {i} refused"
        _apply(bits, logits.copy())
        if i != eos:
            advance(i)
    return (time.perf_counter() - t) / (len(ids) + 1)


def _byte_level_vocab(tk, skip: set[int]) -> dict[bytes, list[int]]:
    """Token bytes for outlines-core (GPT-2 byte-level pieces decoded to the bytes they stand for)."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAD)) + list(range(0xAE, 0x100))
    chars, extra = {}, 0
    for b in range(256):
        chars[chr(b if b in keep else 256 + extra)] = b
        extra += b not in keep
    vocab: dict[bytes, list[int]] = {}
    for piece, i in tk.get_vocab(with_added_tokens=True).items():
        if i not in skip:
            key = bytes(chars[c] for c in piece) if all(c in chars for c in piece) else piece.encode()
            vocab.setdefault(key, []).append(i)
    return vocab


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("tokenizer")
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    import llguidance as llg
    import outlines_core as oc
    from outlines_core.json_schema import build_regex_from_schema
    from tokenizers import Tokenizer

    tk = Tokenizer.from_file(args.tokenizer)
    vocab = tk.get_vocab_size(with_added_tokens=True)
    eos = tk.token_to_id("<|im_end|>") or tk.token_to_id("<|endoftext|>") or 0
    ids = tk.encode(TEXT, add_special_tokens=False).ids
    out = {"vocab": vocab, "tokens": len(ids) + 1}

    t = time.perf_counter()
    lt = llg.LLTokenizer(tk.to_str(), n_vocab=vocab, eos_token=eos)
    grammar = llg.LLMatcher.grammar_from_json_schema(SCHEMA, defaults={"whitespace_flexible": False})
    ll = {"tokenizer_seconds": time.perf_counter() - t, "per_token_seconds": []}
    for _ in range(args.rounds):
        m = llg.LLMatcher(lt, grammar, log_level=0)
        ll["per_token_seconds"].append(_walk(ids, vocab, eos, lambda b: m.unsafe_compute_mask_ptr(b.ctypes.data, b.nbytes),
                                             m.consume_token))
    t = time.perf_counter()
    voc = oc.Vocabulary(eos, _byte_level_vocab(tk, {eos} | set(tk.get_added_tokens_decoder())))
    ocr = {"vocabulary_seconds": time.perf_counter() - t, "per_token_seconds": []}
    t = time.perf_counter()
    index = oc.Index(build_regex_from_schema(json.dumps(SCHEMA), None), voc)
    ocr["index_seconds"] = time.perf_counter() - t
    for _ in range(args.rounds):
        g = oc.Guide(index)
        ocr["per_token_seconds"].append(_walk(ids, vocab, eos, lambda b: g.write_mask_into(b.ctypes.data, b.size, 4),
                                              g.advance))
    for name, r in (("llguidance", ll), ("outlines_core", ocr)):
        r["per_token_seconds"] = min(r["per_token_seconds"])
        out[name] = {k: round(v, 6) for k, v in r.items()}
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
