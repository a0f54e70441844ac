"""Constrained sampling: a grammar (a JSON schema, any JSON object, or a call to one of the declared
tools) decides which tokens may come next, with llguidance (a Rust Earley parser with lazily built
lexers: no per-schema index to build, cp39-abi3 wheels without torch; comparison in docs/serving.md).

The generation loop asks a Constraint for `mask(logits)` (disallowed tokens -> -inf; EOS only when
the grammar accepts what was generated) before sampling and calls `advance(token)` after. A schema
the engine cannot handle raises GrammarError naming the feature (the server answers 400).
Costs are per token, in seconds, in the benchmark (bench/grammar.py). May import: stdlib, numpy,
llguidance (optional: a platform without its wheel gets GrammarError), edgekit.device.
"""

from __future__ import annotations

import json
import threading
import weakref

import numpy as np

JSON_OBJECT_SCHEMA = {"type": "object"}  # response_format json_object: any JSON object
# No whitespace between JSON tokens: a small model would otherwise spend its budget on blanks.
COMPILE_OPTIONS = {"whitespace_flexible": False}


class GrammarError(ValueError):
    """A grammar the engine cannot build (an unsupported schema feature, a bad pattern) or no engine."""


def _engine():
    try:
        import llguidance
    except ImportError:
        raise GrammarError("structured output needs the llguidance package, which has no wheel for this "
                           "platform (pip install llguidance)") from None
    return llguidance


def schema_grammar(schema: dict) -> str:
    """The grammar text for outputs valid against JSON `schema`, or GrammarError naming the feature."""
    if not isinstance(schema, dict):
        raise GrammarError("the JSON schema must be an object")
    llg = _engine()
    try:
        grammar = llg.LLMatcher.grammar_from_json_schema(schema, defaults=COMPILE_OPTIONS)
    except ValueError as exc:
        raise GrammarError(f"invalid JSON schema: {exc}") from None
    problem = llg.LLMatcher.validate_grammar(grammar)
    if problem:
        raise GrammarError("unsupported JSON schema: " + problem.strip().replace("\n", " ")[:300])
    return grammar


def tool_call_schema(tools: list[dict]) -> dict:
    """The schema of one call, {"name": a declared name, "arguments": that function's parameters}."""
    calls = [{"type": "object", "properties": {"name": {"const": t["name"]}, "arguments": t["parameters"]},
              "required": ["name", "arguments"], "additionalProperties": False} for t in tools]
    return calls[0] if len(calls) == 1 else {"anyOf": calls}


_TOKENIZERS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()
_LOCK = threading.Lock()


def engine_tokenizer(tokenizer, vocab_size: int):
    """llguidance's view of a device tokenizer (edgekit.device.tokenizer.TextTokenizer), built once
    per tokenizer (about 0.5-1 s for a 49k vocabulary) and kept while the tokenizer lives."""
    llg = _engine()
    with _LOCK:
        sizes = _TOKENIZERS.setdefault(tokenizer, {})
        if vocab_size not in sizes:
            eos = min(tokenizer.eos_token_ids) if tokenizer.eos_token_ids else None
            sizes[vocab_size] = llg.LLTokenizer(tokenizer.raw.to_str(), n_vocab=vocab_size, eos_token=eos)
        return sizes[vocab_size]


class Constraint:
    """One generation's grammar state; the vocabulary size comes from the first logits (or `vocab_size`)."""

    def __init__(self, grammar: str, tokenizer, vocab_size: int | None = None):
        self.grammar, self.tokenizer, self.matcher = grammar, tokenizer, None
        if vocab_size is not None:
            self._start(vocab_size)

    def _start(self, vocab_size: int) -> None:
        llg = _engine()
        self.matcher = llg.LLMatcher(engine_tokenizer(self.tokenizer, vocab_size), self.grammar, log_level=0)
        if self.matcher.is_error():
            raise GrammarError("unsupported grammar: " + self.matcher.get_error())
        self.vocab_size = vocab_size
        self.eos_ids = sorted(i for i in self.tokenizer.eos_token_ids if i < vocab_size)
        self._bits = np.zeros((vocab_size + 31) // 32, dtype=np.int32)

    def allowed(self) -> np.ndarray:
        """A boolean [V] mask of the tokens that may come next; EOS only once the grammar accepts."""
        m = self.matcher
        if m.is_error():
            raise GrammarError("constrained generation failed: " + m.get_error())
        m.unsafe_compute_mask_ptr(self._bits.ctypes.data, self._bits.nbytes)
        ok = np.unpackbits(self._bits.view(np.uint8), bitorder="little")[: self.vocab_size].astype(bool)
        accepting = m.is_accepting()
        ok[self.eos_ids] = accepting
        if m.is_stopped():  # nothing may follow: only an end
            ok[:] = False
            ok[self.eos_ids] = True
        return ok

    def mask(self, logits: np.ndarray) -> np.ndarray:
        """A copy of `logits` [V] with every token the grammar forbids at -inf."""
        if self.matcher is None:
            self._start(logits.shape[-1])
        out = np.array(logits, dtype=np.float32, copy=True)
        out[~self.allowed()] = -np.inf
        return out

    def advance(self, token: int) -> None:
        """Move the grammar past `token` (one the mask allowed)."""
        if token not in self.eos_ids and not self.matcher.consume_token(token):
            raise GrammarError("constrained generation failed: " + self.matcher.get_error())

    def accepts(self, text: str) -> bool:
        """Whether `text` is a complete, valid output of this grammar (checked on the tokenizer's own
        tokens: any tokenization of the same bytes is accepted alike)."""
        if self.matcher is None:
            self._start(self.tokenizer.raw.get_vocab_size(with_added_tokens=True))
        ids = self.tokenizer.encode(text, add_special_tokens=False)
        return self.matcher.consume_tokens(ids) and self.matcher.is_accepting()


def parse_tool_call(text: str, tools: list[dict]) -> dict | None:
    """{"name", "arguments" (a JSON string)} when `text` is one call of a declared tool, else None.
    Only the shape is checked here; a constrained reply already matches the function's schema."""
    try:
        value = json.loads(text)
    except ValueError:
        return None
    names = {t["name"] for t in tools}
    if (not isinstance(value, dict) or set(value) != {"name", "arguments"} or value["name"] not in names
            or not isinstance(value["arguments"], dict)):
        return None
    return {"name": value["name"], "arguments": json.dumps(value["arguments"])}
