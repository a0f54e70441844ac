"""Request parsing and validation for `edgekit serve`: OpenAI-shaped JSON bodies (completions, chat,
embeddings) -> typed request objects, or a RequestError naming the field (the route answers 400).

No HTTP here: functions take decoded bodies and return values, so they are testable alone.
May import: stdlib, edgekit.device.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from edgekit.device.chat import ChatError, check_messages, render, with_tools
from edgekit.device.embeddings import EmbeddingRequestError, parse_embeddings_request
from edgekit.device.limits import DEFAULT_LIMITS, Limits
from edgekit.device.logprobs import MAX_CHAT_TOP_LOGPROBS, MAX_COMPLETION_LOGPROBS
from edgekit.device.runtime import LoadedModel
from edgekit.device.sampling import Penalties, Sampler
from edgekit.device.server.structured import Structure, StructuredError, parse_structure

# OpenAI fields we accept and ignore (they do not change what a single-sequence server does).
IGNORED_FIELDS = {"user", "echo", "best_of", "logit_bias", "suffix", "stream_options"}
# Repetition penalties (edgekit.device.sampling.Penalties): request field -> (low, high, integer).
PENALTY_FIELDS = {"frequency_penalty": (-2.0, 2.0, False), "presence_penalty": (-2.0, 2.0, False),
                  "repeat_penalty": (0.0, 10.0, False), "repeat_last_n": (-1, 1 << 20, True)}


class RequestError(Exception):
    """A bad request: `message` for the client, the offending field `param`, the HTTP `status`."""

    def __init__(self, message: str, param: str | None = None, status: int = 400):
        super().__init__(message)
        self.param, self.status = param, status


@dataclass(frozen=True)
class CompletionRequest:
    """A validated /v1/completions or /v1/chat/completions request (`chat`), prompt tokenized."""

    prompt: str
    prompt_ids: list[int]
    max_tokens: int
    temperature: float
    top_p: float
    top_k: int
    seed: int | None  # reduced modulo 2**64
    n: int
    stream: bool
    stop: list[str]
    penalties: Penalties = field(default_factory=Penalties)
    chat: bool = False
    logprobs: int | None = None  # None: no logprobs; else how many top alternatives per token (0 = none)
    structure: Structure = field(default_factory=Structure)  # response_format / tools (server.structured)

    def sampler(self) -> Sampler:
        """A fresh sampler for one generation of this request."""
        return Sampler(self.temperature, self.top_p, self.top_k, self.seed, self.penalties)


@dataclass(frozen=True)
class EmbeddingsRequest:
    """A validated /v1/embeddings request: token ids per input, and "float" or "base64"."""

    ids: list[list[int]]
    encoding_format: str

    @property
    def tokens(self) -> int:
        return sum(map(len, self.ids))


def parse_json(raw: bytes):
    """The decoded JSON value of a request body, or RequestError (400)."""
    try:
        return json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise RequestError("request body is not valid JSON (UTF-8)") from None


def parse_embeddings(body, loaded: LoadedModel) -> EmbeddingsRequest:
    """Validate and tokenize a /v1/embeddings body (run it off the event loop)."""
    try:
        ids, fmt = parse_embeddings_request(body, loaded)
    except EmbeddingRequestError as exc:
        raise RequestError(str(exc), exc.param) from None
    return EmbeddingsRequest(ids, fmt)


def _number(body: dict, name: str, default, lo: float, hi: float, integer: bool = False):
    value = body.get(name, default)
    if value is None:
        return default
    ok_type = isinstance(value, int) if integer else isinstance(value, (int, float))
    if isinstance(value, bool) or not ok_type:
        raise RequestError(f"'{name}' must be {'an integer' if integer else 'a number'}", name)
    if not lo <= value <= hi:
        raise RequestError(f"'{name}' must be between {lo} and {hi}, got {value}", name)
    return value


def _stop_strings(body: dict, limits: Limits) -> list[str]:
    stop = body.get("stop")
    if stop is None:
        return []
    if isinstance(stop, str):
        stop = [stop]
    most, chars = limits.max_stop_strings, limits.max_stop_chars
    if not isinstance(stop, list) or len(stop) > most or not all(isinstance(s, str) for s in stop):
        raise RequestError(f"'stop' must be a string or a list of at most {most} strings", "stop")
    if any(len(s) > chars for s in stop):
        raise RequestError(f"each 'stop' string must be at most {chars} characters", "stop")
    return stop


def _penalties(body: dict, defaults: dict) -> dict:
    """The repetition-penalty fields of a request; an omitted one takes the bundle's default."""
    return {name: _number(body, name, defaults[name], lo, hi, integer=integer)
            for name, (lo, hi, integer) in PENALTY_FIELDS.items()}


def _check_prompt_size(chars: int, loaded: LoadedModel, limits: Limits, param: str) -> None:
    """Refuse, before tokenizing, a prompt too long to fit the context (a cheap check on characters)."""
    most = limits.max_prompt_chars(loaded.max_sequence_length)
    if chars > most:
        raise RequestError(f"prompt is {chars} characters; at most {most} are accepted for this model's "
                           f"{loaded.max_sequence_length}-token context", param)


def _chat_prompt(body: dict, gen: dict, loaded: LoadedModel, limits: Limits, tools: tuple = ()) -> str:
    raw = body.get("messages")
    if isinstance(raw, list) and len(raw) > limits.max_messages:
        raise RequestError(f"'messages' has {len(raw)} entries; at most {limits.max_messages} are accepted",
                           "messages")
    try:
        messages = check_messages(raw)
        _check_prompt_size(sum(len(m["content"]) for m in messages), loaded, limits, "messages")
        tool_var = None
        if tools:
            messages, tool_var = with_tools(messages, list(tools), gen.get("chat_template"))
        return render(messages, gen.get("chat_template"), gen.get("bos_token", ""), gen.get("eos_token", ""),
                      tool_var)
    except ChatError as exc:
        raise RequestError(str(exc), exc.param) from None


def _text_prompt(body: dict, loaded: LoadedModel, limits: Limits) -> str:
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1:
        prompt = prompt[0]
    if not isinstance(prompt, str):
        raise RequestError("'prompt' must be a string", "prompt")
    if not prompt:
        raise RequestError("'prompt' must not be empty", "prompt")
    _check_prompt_size(len(prompt), loaded, limits, "prompt")
    return prompt


def _sampling(body: dict, loaded: LoadedModel, limits: Limits) -> dict:
    """The numeric and flag fields of a completion request, bundle defaults for the omitted ones."""
    ctx_len, d = loaded.max_sequence_length, loaded.sampling_defaults
    params = {
        "max_tokens": _number(body, "max_tokens", min(d["max_new_tokens"], ctx_len), 1, ctx_len, integer=True),
        "temperature": _number(body, "temperature", d["temperature"], 0.0, 2.0),
        "top_p": _number(body, "top_p", d["top_p"], 0.0, 1.0),
        "top_k": _number(body, "top_k", d["top_k"], 0, 1 << 20, integer=True),
        "seed": _number(body, "seed", None, -(1 << 63), (1 << 64) - 1, integer=True),
        "n": _number(body, "n", 1, 1, limits.max_n, integer=True),
        "stream": body.get("stream", False),
    }
    penalties = _penalties(body, d)
    for name, value in (("top_p", params["top_p"]), ("repeat_penalty", penalties["repeat_penalty"])):
        if value == 0:
            raise RequestError(f"'{name}' must be greater than 0", name)
    if not isinstance(params["stream"], bool):
        raise RequestError("'stream' must be true or false", "stream")
    params["stop"] = _stop_strings(body, limits)
    if params["seed"] is not None:
        params["seed"] = params["seed"] % (1 << 64)
    params["penalties"] = Penalties(**penalties)
    return params


def _logprobs(body: dict, chat: bool) -> int | None:
    """Top alternatives per token for `logprobs`, or None when not asked. Completions: `logprobs`
    is that number (0-5); chat: `logprobs` true, with `top_logprobs` (0-20) alternatives."""
    if not chat:
        return _number(body, "logprobs", None, 0, MAX_COMPLETION_LOGPROBS, integer=True)
    wanted = body.get("logprobs")
    if wanted is not None and not isinstance(wanted, bool):
        raise RequestError("'logprobs' must be true or false", "logprobs")
    top = _number(body, "top_logprobs", None, 0, MAX_CHAT_TOP_LOGPROBS, integer=True)
    if top is not None and not wanted:
        raise RequestError("'top_logprobs' needs 'logprobs': true", "top_logprobs")
    return (top or 0) if wanted else None


def parse_completion(body, loaded: LoadedModel, chat: bool = False,
                     limits: Limits = DEFAULT_LIMITS) -> CompletionRequest:
    """Validate a /v1/completions (or, with `chat`, /v1/chat/completions) body within `limits`, or
    raise RequestError naming the field. Tokenizes (and renders the chat template): run it off the
    event loop."""
    if not isinstance(body, dict):
        raise RequestError("request body must be a JSON object")
    known = {"model", "max_tokens", "temperature", "top_p", "top_k", "seed", "stop", "n", "stream", "logprobs",
             *PENALTY_FIELDS}
    known |= {"messages", "max_completion_tokens", "top_logprobs", "tools", "tool_choice", "response_format",
              "parallel_tool_calls"} if chat else {"prompt", "response_format"}
    unknown = sorted(set(body) - known - IGNORED_FIELDS)
    if unknown:
        raise RequestError(f"unknown field '{unknown[0]}'", unknown[0])
    gen = loaded.generation
    add_special = True
    try:
        structure = parse_structure(body, chat)
    except StructuredError as exc:
        raise RequestError(str(exc), exc.param) from None
    if chat:
        prompt = _chat_prompt(body, gen, loaded, limits, structure.tools)
        add_special = not gen.get("chat_template")  # a bundle template writes its own special tokens
        if body.get("max_tokens") is None and body.get("max_completion_tokens") is not None:
            body = dict(body, max_tokens=body["max_completion_tokens"])
    else:
        prompt = _text_prompt(body, loaded, limits)
    params = _sampling(body, loaded, limits)
    params["logprobs"] = _logprobs(body, chat)
    ids = loaded.tokenizer.encode(prompt, add_special_tokens=add_special)
    ctx_len = loaded.max_sequence_length
    if len(ids) >= ctx_len:
        raise RequestError(f"prompt is {len(ids)} tokens; this model's context is {ctx_len}",
                           "messages" if chat else "prompt")
    return CompletionRequest(prompt=prompt, prompt_ids=ids, chat=chat, structure=structure, **params)
