"""Sentence embeddings from an exported encoder bundle (ONNX Runtime or LiteRT).

The graph (edgekit/workshop/encoder_export.py) takes embeds [1,S,hidden] (word + position +
token-type rows from the bundle's host tables, summed here) and mask [1,S], and returns the
masked mean of its last hidden states; this module L2-normalises it (unit vectors, so a dot
product is the cosine similarity). ONNX graphs take any S up to the model's maximum; TFLite graphs
have a fixed S and inputs are zero-padded with mask 0. Int8 graph inputs/outputs are
(de)quantized with their own scale and zero point.
Sessions/interpreters are injected, so tests can pass fakes. May import: stdlib, numpy, runtimes lazily.
"""

from __future__ import annotations


import numpy as np

from edgekit.device.tflite_model import load_host_tables


def encoder_inputs(tables: dict, ids: list[int], length: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(embeds [1,L,hidden], mask [1,L]) for token `ids`, zero-padded to `length` if given."""
    n = len(ids)
    word = tables["embed"][ids].astype(np.float32)
    if "embed_scale" in tables:
        word *= tables["embed_scale"][ids][:, None]
    rows = word + tables["position"][:n] + tables["token_type"][0]
    size = length or n
    embeds = np.zeros((1, size, rows.shape[1]), np.float32)
    embeds[0, :n] = rows
    mask = np.zeros((1, size), np.float32)
    mask[0, :n] = 1.0
    return embeds, mask


class SentenceEncoder:
    """embed(list of token id lists) -> [N, hidden] unit vectors."""

    def __init__(self, run, tables: dict, max_sequence_length: int, static_length: int | None):
        self.run = run  # (embeds, mask) -> pooled [1, hidden]
        self.tables = {k: np.asarray(v) for k, v in tables.items()}
        self.max_sequence_length = max_sequence_length
        self.static_length = static_length
        self.accelerator = "cpu"

    def embed(self, batch_ids: list[list[int]]) -> np.ndarray:
        out = []
        for ids in batch_ids:
            if len(ids) > self.max_sequence_length:
                raise ValueError(f"input of {len(ids)} tokens exceeds the model's {self.max_sequence_length}")
            v = np.asarray(self.run(*encoder_inputs(self.tables, ids, self.static_length)), np.float32).reshape(-1)
            out.append(v / max(float(np.linalg.norm(v)), 1e-12))
        return np.stack(out)


def open_onnx_encoder(model_path, manifest: dict, threads: int = 0, session=None, *,
                      allow_cpu_fallback: bool = True) -> SentenceEncoder:
    """A SentenceEncoder on ONNX Runtime (CPU only: `allow_cpu_fallback`, the runners' common keyword, is moot)."""
    if session is None:
        from edgekit.device.onnx_model import ort_session

        session = ort_session(model_path, threads)

    def run(embeds, mask):
        return session.run(["embedding"], {"embeds": embeds, "mask": mask})[0]

    sig = manifest["signature"]
    enc = SentenceEncoder(run, load_host_tables(model_path, sig), sig["max_sequence_length"], None)
    enc.accelerator = "cpu (onnxruntime)"
    return enc


def open_tflite_encoder(model_path, manifest: dict, threads: int = 0, session=None, *,
                        allow_cpu_fallback: bool = True) -> SentenceEncoder:
    """A SentenceEncoder on the LiteRT Interpreter. Whatever `allow_cpu_fallback` says, the interpreter that
    make_interpreter returns is the only one built (the caller settles the delegate's facts)."""
    from edgekit.device.tflite_model import SignatureCall, make_interpreter

    found = getattr(session, "delegation", None)  # an injected interpreter may carry its facts (tests)
    if session is None:
        m = manifest["model"]
        session, found = make_interpreter(model_path, threads, m.get("delegate", "none"), m.get("delegate_library", ""),
                                          m.get("delegate_options"))
    sig_runner = SignatureCall(session.get_signature_runner("encode"), length_input=1, length_axis=1)

    def run(embeds, mask):
        return sig_runner([embeds, mask])[0]

    sig = manifest["signature"]
    enc = SentenceEncoder(run, load_host_tables(model_path, sig), sig["max_sequence_length"], sig["max_sequence_length"])
    enc.delegation = found
    enc.accelerator = found.accelerator if found is not None else "injected"
    return enc
