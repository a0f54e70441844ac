"""Open a verified bundle for inference: model runner + tokenizer + generation defaults.

Runtimes are chosen by the manifest's `model.runtime` through the RUNNERS registry (no
per-target branching). May import: stdlib, edgekit.core, edgekit.device, numpy; runtimes lazily.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

from edgekit.core.bundle import Bundle, load_bundle
from edgekit.core.errors import BundleError
from edgekit.core.recipes import SCHEMA as RECIPE_SCHEMA
from edgekit.device.delegation import CPU_DELEGATES, settle
from edgekit.device.encoder_model import open_onnx_encoder, open_tflite_encoder
from edgekit.device.onnx_model import open_onnx
from edgekit.device.runtimes import require
from edgekit.device.segmented_model import open_segmented, open_segmented_encoder
from edgekit.device.speculative import DEFAULT_DRAFT_TOKENS, Speculation
from edgekit.device.tflite_model import open_tflite
from edgekit.device.tokenizer import TextTokenizer

# What a request may omit, with edgekit's defaults (the recipe schema's [generation] table, one source).
GENERATION_FIELDS = {k: f.default for k, f in RECIPE_SCHEMA.fields["generation"].fields.items()}


def generation_defaults(generation: dict) -> dict:
    """{field: {"value", "source"}} for every field a request may omit, from a bundle's generation.json
    (bundles built before sources were recorded say so; a field they lack takes edgekit's default)."""
    sources = generation.get("sources") or {}
    out = {}
    for key, default in GENERATION_FIELDS.items():
        if key in generation:
            out[key] = {"value": generation[key], "source": sources.get(key, "bundle generation.json")}
        else:
            out[key] = {"value": default, "source": "edgekit default (not in the bundle)"}
    return out


# Every runner: open(model_path, manifest, threads=, session=, *, allow_cpu_fallback=) -> model. With
# `allow_cpu_fallback` False the caller will refuse a useless hardware delegate (settle), so a runner
# builds no CPU model of its own for that case.
RUNNERS = {
    "text-generation": {"onnxruntime": open_onnx, "litert": open_tflite, "litert-segments": open_segmented},
    "feature-extraction": {"onnxruntime": open_onnx_encoder, "litert": open_tflite_encoder,
                           "litert-segments": open_segmented_encoder},
}


@dataclass
class LoadedModel:
    """Everything the server needs from a bundle."""

    bundle: Bundle
    model: object
    tokenizer: TextTokenizer
    generation: dict
    threads: int = 0
    threads_source: str = ""
    device_verify: dict | None = None  # `serve --verify`: the reference check's result on this machine
    fallback_warning: str | None = None  # --allow-cpu-fallback let an unusable delegate run on the CPU
    prefix_cache: object | None = None  # edgekit.device.prefix_cache.PrefixCache (serve --prefix-cache-mib)
    speculation: Speculation | None = None  # the bundle's draft proposing tokens (serve --draft)
    slots: int = 1  # requests generating at once (serve --parallel, edgekit.device.batching.enable_parallel)
    parallel: dict | None = None  # /props "parallel": requested, slots, why fewer

    @property
    def delegation(self):
        """What the hardware delegate really took (edgekit.device.delegation.Delegation), or None for
        runtimes without delegates (ONNX Runtime) and injected sessions."""
        return getattr(self.model, "delegation", None)

    @property
    def sampling_defaults(self) -> dict:
        """Value of every field a request may omit (generation_defaults without the sources)."""
        return {k: v["value"] for k, v in generation_defaults(self.generation).items()}

    @property
    def accelerator(self) -> str:
        """What actually runs the model (a delegate that failed to load shows as CPU here)."""
        return getattr(self.model, "accelerator", "cpu")

    def props(self) -> dict:
        m = self.bundle.manifest
        return {
            "name": m["name"], "task": m["task"], "target": m["target"]["name"], "format": m["model"]["format"],
            "precision": m["model"]["precision"], "runtime": m["model"]["runtime"],
            "delegate_requested": m["model"].get("delegate", "none"), "accelerator": self.accelerator,
            "delegation": self.delegation.as_dict() if self.delegation is not None else None,
            "zero_copy": getattr(self.model, "zero_copy", None),  # LiteRT: the KV cache kept in the interpreter
            "litert_api": getattr(self.model, "litert_api", None),  # CompiledModel (weight cache) or Interpreter (why)
            "threads": self.threads, "threads_source": self.threads_source, "cpus_available": available_cpus(),
            "max_sequence_length": self.max_sequence_length,
            "parameters": m["model"].get("parameters"), "edgekit_version": m.get("edgekit_version"),
            "gate": m.get("gate", {}).get("passed"), "device_verify": self.device_verify,
            "prefix_cache": self.describe_prefix_cache(),
            "speculative": self.speculation.describe() if self.speculation is not None else None,
            "parallel": self.describe_parallel(),
            **({"generation_defaults": generation_defaults(self.generation),
                "chat_template": self.generation.get("chat_template") or None}  # as llama-server's /props
               if m["task"] == "text-generation" else {}),
        }

    def describe_parallel(self) -> dict:
        """/props "parallel": slots requested and granted, why fewer, the batcher's passes so far."""
        out = dict(self.parallel or {"requested": 1, "slots": self.slots, "reason": None})
        describe = getattr(self.model, "describe", None)
        return dict(out, **describe()) if callable(describe) else out

    def describe_prefix_cache(self) -> dict | None:
        """/props "prefix_cache": budget, use and reuse; whether this runner can reuse at all."""
        if self.prefix_cache is None:
            return None
        from edgekit.device.prefix_cache import supports

        return dict(self.prefix_cache.describe(), runner_supported=supports(self.model))

    @property
    def name(self) -> str:
        return self.bundle.manifest["name"]

    @property
    def task(self) -> str:
        return self.bundle.manifest["task"]

    @property
    def max_sequence_length(self) -> int:
        return self.bundle.manifest["model"]["max_sequence_length"]


def requests_hardware_delegate(manifest: dict) -> bool:
    """The bundle's model asks for a GPU / Edge TPU delegate (its load must then be checked)."""
    return manifest["model"].get("delegate", "none") not in CPU_DELEGATES


def available_cpus() -> int:
    """CPUs this process may run on (its affinity mask: a container or `taskset` may allow fewer than
    the machine has)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        return os.cpu_count() or 1


def resolve_threads(requested: int, manifest: dict, cpus: int | None = None) -> tuple[int, str]:
    """(runtime threads, why): `requested` (--threads) when > 0, else the target's `runtime.threads`,
    else (0 in the target) every CPU this process may use; always capped at those CPUs."""
    cpus = cpus or available_cpus()
    target = manifest.get("target", {})
    target_threads = int(target.get("runtime", {}).get("threads", 0) or 0)
    if requested > 0:
        threads, why = requested, "--threads"
    elif target_threads > 0:
        threads, why = target_threads, f"target {target.get('name', '?')} runtime.threads"
    else:
        threads, why = cpus, f"target {target.get('name', '?')} runtime.threads = 0: every CPU this process may use"
    if threads > cpus:
        threads, why = cpus, f"{why} = {threads}, capped at the {cpus} CPUs this process may use"
    return threads, why


def runner_for(bundle: Bundle, check_installed: bool = True):
    """The open function for the bundle's task and runtime, or BundleError saying what is missing
    (with `check_installed`, also when the runtime's Python package is not installed here)."""
    m = bundle.manifest
    if m["task"] not in RUNNERS:
        raise BundleError(f"{bundle.root}: task '{m['task']}' is not served by this version of edgekit")
    runners = RUNNERS[m["task"]]
    runtime = m["model"]["runtime"]
    if runtime not in runners:
        raise BundleError(f"{bundle.root}: runtime '{runtime}' is not available; known: {', '.join(runners)}")
    if check_installed:
        require(runtime, str(bundle.root))
    return runners[runtime]


SPECULATIVE_RUNTIMES = ("onnxruntime",)  # runners that can rewind a KV cache (TFLite: not yet)


def check_draft(bundle: Bundle, required: bool = False) -> bool:
    """Whether the bundle's draft can be used: False when it has none (BundleError if `required`);
    BundleError when the model's or the draft's runtime cannot decode speculatively."""
    entry = bundle.manifest.get("draft")
    if not entry:
        if required:
            raise BundleError(f"{bundle.root}: the bundle has no draft model (build it with `edgekit build --with-draft`)")
        return False
    for what, runtime in (("model", bundle.manifest["model"]["runtime"]), ("draft", entry.get("runtime"))):
        if runtime not in SPECULATIVE_RUNTIMES:
            raise BundleError(f"{bundle.root}: the {what}'s runtime '{runtime}' cannot decode speculatively yet "
                              f"(only {', '.join(SPECULATIVE_RUNTIMES)}); serve it with --no-draft")
    return True


def open_draft(bundle: Bundle, model, threads: int, k: int = DEFAULT_DRAFT_TOKENS, session=None) -> Speculation:
    """The bundle's draft (manifest "draft", edgekit.core.bundle_pair) opened beside `model`, proposing
    `k` tokens a pass; BundleError when the bundle has none or a runner cannot rewind its cache."""
    entry = bundle.manifest.get("draft")
    if not entry:
        raise BundleError(f"{bundle.root}: the bundle has no draft model (build it with `edgekit build --with-draft`)")
    runners = RUNNERS["text-generation"]
    if entry["runtime"] not in runners:
        raise BundleError(f"{bundle.root}: the draft's runtime '{entry['runtime']}' is not available")
    if session is None:
        require(entry["runtime"], str(bundle.root))
    draft = runners[entry["runtime"]](bundle.file(entry["file"]), {"model": entry, "signature": entry.get("signature"),
                                      "paired": True}, threads=threads, session=session)
    for what, m in (("model", model), ("draft", draft)):
        if not hasattr(m, "rewind"):
            raise BundleError(f"{bundle.root}: speculative decoding needs a runner that can rewind its cache; the "
                              f"{what}'s runtime ({type(m).__name__}) cannot yet (ONNX bundles can): serve --no-draft")
    layers = (entry.get("architecture") or {}).get("layers")
    return Speculation(draft, k=k, name=entry.get("name", "draft"), layers=layers)


def open_model(bundle: Bundle, threads: int = 0, session=None, delegate_library: str | None = None,
               delegate_options: dict | None = None, allow_cpu_fallback: bool = False,
               draft: bool | None = None, draft_tokens: int = DEFAULT_DRAFT_TOKENS,
               draft_session=None) -> LoadedModel:
    """Build the runner for an already verified bundle. `session` injects a fake runtime session;
    `delegate_library` overrides the target's delegate library path (GPU / Edge TPU) and
    `delegate_options` are passed to it (Edge TPU: {"device": "usb:0"}). A requested hardware
    delegate that is missing or takes no nodes raises DelegateUnusable unless `allow_cpu_fallback`
    (then `fallback_warning` says so and the model's delegation shows cpu_fallback). `draft`: use the
    bundle's draft for speculative decoding (None: when it has one), proposing `draft_tokens` a pass;
    `draft_session` injects its runtime session."""
    m = bundle.manifest
    threads, threads_source = resolve_threads(threads, m)
    if delegate_library or delegate_options:
        model = dict(m["model"])
        if delegate_library:
            model["delegate_library"] = delegate_library
        if delegate_options:
            model["delegate_options"] = delegate_options
        m = dict(m, model=model)
    use_draft = bool(draft or (draft is None and m.get("draft")))
    m = dict(m, paired=True) if use_draft else m  # runners whose sessions take turns with the draft's
    opener = runner_for(bundle, check_installed=session is None)
    model = opener(bundle.model_file, m, threads=threads, session=session, allow_cpu_fallback=allow_cpu_fallback)
    warning = settle(getattr(model, "delegation", None), m["target"]["name"], allow_cpu_fallback)
    tok_info = m["tokenizer"]
    tokenizer = TextTokenizer.from_file(bundle.file(tok_info["file"]), tok_info["eos_token_ids"])
    generation = {}
    if m.get("generation_file"):
        generation = json.loads(bundle.file(m["generation_file"]).read_text(encoding="utf-8"))
    speculation = None
    if use_draft:
        speculation = open_draft(bundle, model, threads, draft_tokens, draft_session)
    return LoadedModel(bundle=bundle, model=model, tokenizer=tokenizer, generation=generation, threads=threads,
                       threads_source=threads_source, fallback_warning=warning, speculation=speculation)


def load(path, threads: int = 0, delegate_library: str | None = None, delegate_options: dict | None = None,
         allow_cpu_fallback: bool = False, draft: bool | None = None,
         draft_tokens: int = DEFAULT_DRAFT_TOKENS) -> LoadedModel:
    """Verify the bundle at `path` (directory or .tar) and open it."""
    return open_model(load_bundle(path), threads=threads, delegate_library=delegate_library,
                      delegate_options=delegate_options, allow_cpu_fallback=allow_cpu_fallback, draft=draft,
                      draft_tokens=draft_tokens)
