"""Open a verified bundle for inference: model runner + tokenizer + generation defaults.

Runtimes are chosen by the manifest's `model.runtime` through the RUNNERS registry (no
per-target branching). May import: stdlib, edgekit.core, edgekit.device, numpy; runtimes lazily.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from edgekit.core.bundle import Bundle, load_bundle
from edgekit.core.errors import BundleError
from edgekit.device.onnx_model import open_onnx
from edgekit.device.tflite_model import open_tflite
from edgekit.device.tokenizer import TextTokenizer

RUNNERS = {"onnxruntime": open_onnx, "litert": open_tflite}


@dataclass
class LoadedModel:
    """Everything the server needs from a bundle."""

    bundle: Bundle
    model: object
    tokenizer: TextTokenizer
    generation: dict

    @property
    def name(self) -> str:
        return self.bundle.manifest["name"]

    @property
    def max_sequence_length(self) -> int:
        return self.bundle.manifest["model"]["max_sequence_length"]


def open_model(bundle: Bundle, threads: int = 0, session=None) -> LoadedModel:
    """Build the runner for an already verified bundle. `session` injects a fake runtime session."""
    m = bundle.manifest
    if m["task"] != "text-generation":
        raise BundleError(f"{bundle.root}: task '{m['task']}' is not served by this version of edgekit")
    runtime = m["model"]["runtime"]
    if runtime not in RUNNERS:
        raise BundleError(f"{bundle.root}: runtime '{runtime}' is not available; known: {', '.join(RUNNERS)}")
    model = RUNNERS[runtime](bundle.model_file, m, threads=threads, session=session)
    tok_info = m["tokenizer"]
    tokenizer = TextTokenizer.from_file(bundle.path(tok_info["file"]), tok_info["eos_token_ids"])
    generation = json.loads(bundle.path(m["generation_file"]).read_text(encoding="utf-8"))
    return LoadedModel(bundle=bundle, model=model, tokenizer=tokenizer, generation=generation)


def load(path, threads: int = 0) -> LoadedModel:
    """Verify the bundle at `path` (directory or .tar) and open it."""
    return open_model(load_bundle(path), threads=threads)
