"""OpenAI-shaped request parsing and response pieces for `edgekit serve` (completions and chat).

May import: stdlib, starlette, edgekit.device.
"""

from __future__ import annotations

from starlette.responses import JSONResponse

from edgekit.device.chat import ChatError, check_messages, render
from edgekit.device.generate import GenerationResult
from edgekit.device.runtime import LoadedModel

MAX_BODY_BYTES = 1 << 20
# OpenAI fields we accept and ignore (they do not change what a single-sequence server does).
_IGNORED_FIELDS = {"user", "logprobs", "echo", "best_of", "presence_penalty", "frequency_penalty",
                   "logit_bias", "suffix", "stream_options"}


class RequestError(Exception):
    def __init__(self, message: str, param: str | None = None, status: int = 400):
        super().__init__(message)
        self.param, self.status = param, status


def error_response(message: str, param: str | None = None, status: int = 400, kind: str = "invalid_request_error"):
    return JSONResponse({"error": {"message": message, "type": kind, "param": param, "code": None}}, status_code=status)


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


def parse_completion_request(body, loaded: LoadedModel, chat: bool = False) -> dict:
    """Validate a /v1/completions (or, with `chat`, /v1/chat/completions) body; returns normalised
    parameters or raises RequestError naming the field."""
    if not isinstance(body, dict):
        raise RequestError("request body must be a JSON object")
    known = {"model", "max_tokens", "temperature", "top_p", "top_k", "seed", "stop", "n", "stream"}
    known |= {"messages", "max_completion_tokens"} if chat else {"prompt"}
    unknown = sorted(set(body) - known - _IGNORED_FIELDS)
    if unknown:
        raise RequestError(f"unknown field '{unknown[0]}'", unknown[0])
    gen = loaded.generation
    add_special = True
    if chat:
        try:
            messages = check_messages(body.get("messages"))
            template = gen.get("chat_template")
            prompt = render(messages, template, gen.get("bos_token", ""), gen.get("eos_token", ""))
        except ChatError as exc:
            raise RequestError(str(exc), exc.param) from None
        add_special = not template  # a bundle template writes its own special tokens
        if body.get("max_tokens") is None and body.get("max_completion_tokens") is not None:
            body = dict(body, max_tokens=body["max_completion_tokens"])
    else:
        prompt = body.get("prompt")
        if isinstance(prompt, list) and len(prompt) == 1:
            prompt = prompt[0]
        if not isinstance(prompt, str):
            raise RequestError("'prompt' must be a string", "prompt")
        if not prompt:
            raise RequestError("'prompt' must not be empty", "prompt")
    ctx_len = loaded.max_sequence_length
    params = {
        "prompt": prompt,
        "max_tokens": _number(body, "max_tokens", gen.get("max_new_tokens", 128), 1, ctx_len, integer=True),
        "temperature": _number(body, "temperature", gen.get("temperature", 0.0), 0.0, 2.0),
        "top_p": _number(body, "top_p", gen.get("top_p", 1.0), 0.0, 1.0),
        "top_k": _number(body, "top_k", gen.get("top_k", 0), 0, 1 << 20, integer=True),
        "seed": _number(body, "seed", None, -(1 << 63), (1 << 64) - 1, integer=True),
        "n": _number(body, "n", 1, 1, 1, integer=True),
        "stream": body.get("stream", False),
    }
    if params["top_p"] == 0:
        raise RequestError("'top_p' must be greater than 0", "top_p")
    if not isinstance(params["stream"], bool):
        raise RequestError("'stream' must be true or false", "stream")
    stop = body.get("stop")
    if stop is None:
        stop = []
    elif isinstance(stop, str):
        stop = [stop]
    if not isinstance(stop, list) or len(stop) > 4 or not all(isinstance(s, str) for s in stop):
        raise RequestError("'stop' must be a string or a list of at most 4 strings", "stop")
    params["stop"] = stop
    if params["seed"] is not None:
        params["seed"] = params["seed"] % (1 << 64)
    ids = loaded.tokenizer.encode(prompt, add_special_tokens=add_special)
    if len(ids) >= ctx_len:
        raise RequestError(f"prompt is {len(ids)} tokens; this model's context is {ctx_len}",
                           "messages" if chat else "prompt")
    params["prompt_ids"] = ids
    return params


def _usage(res: GenerationResult) -> dict:
    return {
        "prompt_tokens": res.prompt_tokens,
        "completion_tokens": res.completion_tokens,
        "total_tokens": res.prompt_tokens + res.completion_tokens,
        "prefill_ms": round(res.prefill_seconds * 1000, 3),
        "decode_tokens_per_second": round(res.decode_tokens_per_second, 2),
    }


