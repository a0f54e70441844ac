"""POST /v1/embeddings for feature-extraction bundles (OpenAI request and response shapes).

`input` may be a string, a list of strings, a list of token ids or a list of token-id lists;
`encoding_format` "float" (default) or "base64" (little-endian float32, what the openai client
asks for by default). Vectors are L2-normalised. May import: stdlib, numpy, edgekit.device.
"""

from __future__ import annotations

import base64

import numpy as np

from edgekit.device.limits import DEFAULT_LIMITS

MAX_INPUTS = 256


class EmbeddingRequestError(Exception):
    def __init__(self, message: str, param: str | None = None):
        super().__init__(message)
        self.param = param


def parse_embeddings_request(body, loaded) -> tuple[list[list[int]], str]:
    """(token id lists, encoding format) or EmbeddingRequestError naming the field."""
    if not isinstance(body, dict):
        raise EmbeddingRequestError("request body must be a JSON object")
    known = {"model", "input", "encoding_format", "dimensions", "user"}
    unknown = sorted(set(body) - known)
    if unknown:
        raise EmbeddingRequestError(f"unknown field '{unknown[0]}'", unknown[0])
    fmt = body.get("encoding_format", "float")
    if fmt not in ("float", "base64"):
        raise EmbeddingRequestError("'encoding_format' must be 'float' or 'base64'", "encoding_format")
    dims = body.get("dimensions")
    hidden = loaded.bundle.manifest["model"]["architecture"]["hidden_size"]
    if dims is not None and dims != hidden:
        raise EmbeddingRequestError(f"'dimensions' can only be {hidden} for this model", "dimensions")
    raw = body.get("input")
    if isinstance(raw, str) or (isinstance(raw, list) and raw and all(isinstance(t, int) and not isinstance(t, bool)
                                                                        for t in raw)):
        raw = [raw]
    if not isinstance(raw, list) or not raw:
        raise EmbeddingRequestError("'input' must be a non-empty string, list of strings or list of token ids", "input")
    if len(raw) > MAX_INPUTS:
        raise EmbeddingRequestError(f"'input' has {len(raw)} items; at most {MAX_INPUTS} per request", "input")
    vocab = loaded.bundle.manifest["model"]["architecture"]["vocab_size"]
    out = []
    for item in raw:
        if isinstance(item, str):
            if not item.strip():
                raise EmbeddingRequestError("'input' strings must not be empty", "input")
            most = DEFAULT_LIMITS.max_prompt_chars(loaded.max_sequence_length)
            if len(item) > most:  # cannot fit the model: refused before tokenizing
                raise EmbeddingRequestError(f"an input has {len(item)} characters; at most {most} are accepted", "input")
            ids = loaded.tokenizer.encode(item)
        elif isinstance(item, list) and item and all(isinstance(t, int) and not isinstance(t, bool) and 0 <= t < vocab
                                                     for t in item):
            ids = item
        else:
            raise EmbeddingRequestError("each 'input' item must be a non-empty string or a list of token ids "
                                        f"in [0, {vocab})", "input")
        if len(ids) > loaded.max_sequence_length:
            raise EmbeddingRequestError(f"an input has {len(ids)} tokens; this model takes at most "
                                        f"{loaded.max_sequence_length}", "input")
        out.append(ids)
    return out, fmt


def embeddings_body(vectors: np.ndarray, fmt: str, model: str, tokens: int) -> dict:
    data = []
    for i, v in enumerate(vectors):
        value = (base64.b64encode(np.asarray(v, "<f4").tobytes()).decode("ascii") if fmt == "base64"
                 else [float(x) for x in v])
        data.append({"object": "embedding", "index": i, "embedding": value})
    return {"object": "list", "data": data, "model": model,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}
