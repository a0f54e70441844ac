"""Fakes for the device layer: a tiny deterministic model, tokenizer and onnxruntime-like session."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from edgekit.device.onnx_model import KVCache

VOCAB = 12  # ids 0 = BOS, 1 = EOS, 2.. = letters
LETTERS = "abcdefghij"


class FakeTokenizer:
    """Maps letters to ids 2..11; BOS (0) is prepended by encode, EOS is 1."""

    eos_token_ids = frozenset({1})

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return [0] * add_special_tokens + [2 + LETTERS.index(c) for c in text if c in LETTERS]

    def decode(self, ids: list[int]) -> str:
        return "".join(LETTERS[i - 2] for i in ids if i >= 2)

    def completion_text(self, prompt_ids, new_ids, prompt_text=None) -> str:
        return self.decode(new_ids)


class ScriptedModel:
    """Always predicts the next token of `script` (cycling), counting forward calls."""

    def __init__(self, script: list[int], max_sequence_length: int = 64):
        self.script = script
        self.max_sequence_length = max_sequence_length
        self.calls: list[int] = []

    def new_cache(self) -> KVCache:
        return KVCache()

    def forward(self, token_ids, cache, last_only=False):
        self.calls.append(len(token_ids))
        self.last_only = last_only
        rows = []
        for k in range(len(token_ids)):
            logits = np.zeros(VOCAB, dtype=np.float32)
            logits[self.script[(cache.length + k) % len(self.script)]] = 5.0
            rows.append(logits)
        cache.length += len(token_ids)
        return np.stack(rows[-1:] if last_only else rows)


class RepeatingModel:
    """The same logits at every position (EOS -1, 'a' 4, 'b' 3, the rest 0): greedy generation
    repeats 'a' forever, so only a repetition penalty can change what it picks."""

    max_sequence_length = 64

    def new_cache(self) -> KVCache:
        return KVCache()

    def forward(self, token_ids, cache, last_only=False):
        cache.length += len(token_ids)
        row = np.zeros(VOCAB, dtype=np.float32)
        row[1], row[2], row[3] = -1.0, 4.0, 3.0
        return np.stack([row] * (1 if last_only else len(token_ids)))


@dataclass
class _Info:
    name: str
    shape: list


class FakeOrtSession:
    """Records feeds; returns logits favouring (position + 2) and presents grown by one per token."""

    def __init__(self, layers: int = 2, kv_heads: int = 2, head_dim: int = 4, rows: bool = False):
        """`rows`: the current export (a `logits_rows` input selects the logits rows returned)."""
        self.layers, self.kv_heads, self.head_dim, self.rows = layers, kv_heads, head_dim, rows
        self.feeds: list[dict] = []

    def get_inputs(self):
        names = ["input_ids", "attention_mask", "position_ids"] + (["logits_rows"] if self.rows else [])
        names += [f"past_{k}_{i}" for i in range(self.layers) for k in ("key", "value")]
        return [_Info(n, [1, self.kv_heads, "past", self.head_dim] if n.startswith("past") else [1, "s"]) for n in names]

    def get_outputs(self):
        return [_Info("logits", [])] + [_Info(f"present_{k}_{i}", []) for i in range(self.layers) for k in ("key", "value")]

    def run(self, output_names, feeds):
        self.feeds.append(feeds)
        s = feeds["input_ids"].shape[1]
        total = feeds["attention_mask"].shape[1]
        logits = np.zeros((1, s, VOCAB), dtype=np.float32)
        for k, pos in enumerate(feeds["position_ids"][0]):
            logits[0, k, 2 + (pos % 10)] = 1.0
        if self.rows:
            logits = logits[:, feeds["logits_rows"]]
        present = [np.full((1, self.kv_heads, total, self.head_dim), total, dtype=np.float32)
                   for _ in range(2 * self.layers)]
        return [logits, *present]


class FakeSignatureRunner:
    """A LiteRT-like signature runner for a toy model: logits favour (position + 2) % VOCAB, and each
    KV output is the KV input with the written slots set to position + 1. Inputs follow the edgekit
    TFLite layout (embeds, input_pos, cos, sin, mask, k_0, v_0); `log` records (name, positions, mask)."""

    def __init__(self, name: str, length: int, cache_length: int, log: list, kv_dtype=np.float32,
                 kv_quant=(0.0, 0), select: bool = False):
        """`select`: a selecting prefill (one-hot `sel` [1,1,length] after the caches; logits of the
        selected row only)."""
        self.name, self.length, self.cache_length, self.log = name, length, cache_length, log
        self.select = select
        kv = {"dtype": kv_dtype, "shape": np.array([1, 1, cache_length, 2]), "quantization": kv_quant}
        self.inputs = {
            "args_0": {"dtype": np.float32, "shape": np.array([1, length, 4]), "quantization": (0.0, 0)},
            "args_1": {"dtype": np.int32, "shape": np.array([length]), "quantization": (0.0, 0)},
            "args_2": {"dtype": np.float32, "shape": np.array([length, 2]), "quantization": (0.0, 0)},
            "args_3": {"dtype": np.float32, "shape": np.array([length, 2]), "quantization": (0.0, 0)},
            "args_4": {"dtype": np.float32, "shape": np.array([1, 1, length, cache_length]), "quantization": (0.0, 0)},
            "args_5": dict(kv), "args_6": dict(kv),
        }
        if select:
            self.inputs["args_7"] = {"dtype": np.float32, "shape": np.array([1, 1, length]), "quantization": (0.0, 0)}
        self.outputs = {"output_0": {"dtype": np.float32, "shape": np.array([1, 1 if select else length, VOCAB]),
                                     "quantization": (0.0, 0)},
                        "output_1": dict(kv), "output_2": dict(kv)}

    def get_input_details(self):
        return self.inputs

    def get_output_details(self):
        return self.outputs

    def __call__(self, **feeds):
        pos = feeds["args_1"]
        self.log.append((self.name, pos.tolist(), feeds["args_4"].copy(), feeds["args_5"].copy()))
        logits = np.zeros((1, self.length, VOCAB), np.float32)
        logits[0, np.arange(self.length), (pos + 2) % VOCAB] = 5.0
        if self.select:
            self.log[-1] += (feeds["args_7"].copy(),)
            logits = feeds["args_7"] @ logits
        kv = []
        for key in ("args_5", "args_6"):
            a = feeds[key].copy()
            a[0, 0, pos[0]:pos[0] + self.length, :] = (pos[:, None] + 1)
            kv.append(a)
        return {"output_0": logits, "output_1": kv[0], "output_2": kv[1]}


class FakeInterpreter:
    def __init__(self, prefill_length: int, cache_length: int, select: bool = False, **kw):
        """`select`: the current export (prefill returns the row `sel` picks); otherwise every row."""
        self.log: list = []
        self.runners = {"prefill": FakeSignatureRunner("prefill", prefill_length, cache_length, self.log,
                                                       select=select, **kw),
                        "decode": FakeSignatureRunner("decode", 1, cache_length, self.log, **kw)}

    def get_signature_runner(self, name):
        return self.runners[name]


def fake_host_tables(vocab: int = VOCAB, hidden: int = 4, cache_length: int = 16) -> dict:
    return {"embed": np.arange(vocab * hidden, dtype=np.float32).reshape(vocab, hidden),
            "cos": np.ones((cache_length, 2), np.float32), "sin": np.zeros((cache_length, 2), np.float32)}


class FakeClock:
    """A monotonic clock tests advance by hand (seconds)."""

    def __init__(self, start: float = 0.0):
        self.t = start

    def __call__(self) -> float:
        return self.t

    def advance(self, seconds: float) -> None:
        self.t += seconds


class TraceSource:
    """A power source following `watts_at(t)` on `clock`; with `energy_at(t)` it is a counter
    source (cumulative joules), like RAPL."""

    def __init__(self, clock, watts_at=None, energy_at=None, name="fake", measured=True):
        from edgekit.device.power.base import PowerSource

        self.clock, self.watts_at, self.energy_at = clock, watts_at, energy_at
        self.name, self.measured, self.scope, self.detail = name, measured, "a test trace", ""
        self.describe = lambda: PowerSource.describe(self)
        self.reads = 0

    def read(self):
        from edgekit.device.power.base import Sample

        self.reads += 1
        t = self.clock()
        return Sample(watts=None if self.watts_at is None else self.watts_at(t),
                      joules=None if self.energy_at is None else self.energy_at(t))


WORDS = ["[UNK]", ".", "the", "cat", "dog", "sat", "ran", "on", "a", "mat", "and", "then", "slept", "ate", "big", "red"]


def word_tokenizer_file(path) -> None:
    """A real `tokenizers` file: whitespace words -> ids of WORDS ("." = 1 is EOS), no specials."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.save(str(path))


class BigramModel:
    """A deterministic toy LM: the logits after token t are row t of a seeded random table, plus
    seeded noise of scale `noise` (a stand-in for another machine's kernels)."""

    def __init__(self, vocab: int = len(WORDS), seed: int = 0, noise: float = 0.0, max_sequence_length: int = 64):
        rng = np.random.default_rng(seed)
        self.table = rng.normal(0.0, 3.0, (vocab, vocab)).astype(np.float32)
        self.table[:, 1] -= 2.0  # EOS rarely wins, so continuations have length
        self.noise = noise * np.random.default_rng(seed + 1).normal(0.0, 1.0, (vocab, vocab)).astype(np.float32)
        self.max_sequence_length = max_sequence_length
        self.accelerator = "cpu"

    def new_cache(self) -> KVCache:
        return KVCache()

    def forward(self, token_ids, cache, last_only=False):
        if cache.length + len(token_ids) > self.max_sequence_length:
            raise ValueError("sequence too long")
        cache.length += len(token_ids)
        rows = (self.table + self.noise)[np.asarray(token_ids)]
        return rows[-1:] if last_only else rows

    def rewind(self, cache, length: int) -> None:
        """As OnnxCausalLM.rewind (this model's logits depend on the last token only)."""
        assert 0 <= length <= cache.length
        cache.length = length


class FakeLiteRT:
    """A LiteRT-like interpreter for a 1-layer static-cache decoder (signatures `prefill` of 4 tokens and
    `decode`), with the public SignatureRunner call and the private internals the zero-copy path uses
    (`_interpreter_wrapper.tensor/AllocateTensors/Invoke`, `_subgraph_index`). `internals`: "real" (views
    of the tensors, as LiteRT), "copies" (tensor() returns copies: writes are lost, as if a release
    changed the semantics) or "missing-invoke" (Invoke raises AttributeError)."""

    CACHE, HIDDEN, VOCAB = 8, 2, 5

    def __init__(self, internals: str = "real"):
        self.internals = internals
        self.tensors: dict[int, np.ndarray] = {}
        self.sigs = {name: self._signature(base, t) for name, base, t in (("prefill", 0, 4), ("decode", 100, 1))}

    def _signature(self, base: int, t: int) -> dict:
        c, h = self.CACHE, self.HIDDEN
        shapes = [(1, t, h), (t,), (t, h), (t, h), (1, 1, t, c), (1, 1, c, h), (1, 1, c, h)]
        ins = {f"args_{i}": {"index": base + i, "shape": np.array(s), "dtype": np.int32 if i == 1 else np.float32,
                             "quantization_parameters": {"scales": np.array([])}} for i, s in enumerate(shapes)}
        outs = {f"output_{i}": {"index": base + 50 + i, "shape": np.array(s), "dtype": np.float32,
                                "quantization_parameters": {"scales": np.array([])}}
                for i, s in enumerate([(1, t, self.VOCAB), (1, 1, c, h), (1, 1, c, h)])}
        for d in [*ins.values(), *outs.values()]:
            fill = np.nan if d["dtype"] == np.float32 else 0  # fresh tensor memory: garbage
            self.tensors[d["index"]] = np.full(tuple(d["shape"]), fill, dtype=d["dtype"])
        return {"ins": ins, "outs": outs, "base": base}

    def invoke(self, sig: dict) -> None:
        x = [self.tensors[sig["base"] + i] for i in range(7)]
        embeds, pos, mask, k, v = x[0], x[1], x[4], x[5].copy(), x[6].copy()
        for row, p in enumerate(pos):
            k[0, 0, p], v[0, 0, p] = embeds[0, row], 2 * embeds[0, row]
        seen = (mask[0, 0] == 0).astype(np.float32)  # [t, cache]
        score = seen @ (k[0, 0].sum(-1) + v[0, 0].sum(-1))  # [t]
        logits = score[:, None] * np.arange(1, self.VOCAB + 1, dtype=np.float32) + embeds[0].sum(-1, keepdims=True)
        for i, out in enumerate([logits[None], k, v]):
            self.tensors[sig["base"] + 50 + i][...] = out

    def get_signature_runner(self, name: str):
        return _FakeRunner(self, self.sigs[name])


class _FakeWrapper:
    def __init__(self, interp: FakeLiteRT):
        self.interp = interp

    def tensor(self, _wrapper, index: int, _subgraph):
        t = self.interp.tensors[index]
        return t.copy() if self.interp.internals == "copies" else t

    def AllocateTensors(self, _subgraph):  # noqa: N802 (LiteRT's spelling)
        pass

    def Invoke(self, subgraph):  # noqa: N802
        if self.interp.internals == "missing-invoke":
            raise AttributeError("'InterpreterWrapper' object has no attribute 'Invoke'")
        self.interp.invoke(self.interp.sigs["prefill" if subgraph == 0 else "decode"])


class _FakeRunner:
    """The public SignatureRunner: copies feeds in, invokes, copies outputs out."""

    def __init__(self, interp: FakeLiteRT, sig: dict):
        self.interp, self.sig = interp, sig
        self._interpreter_wrapper = _FakeWrapper(interp)
        self._subgraph_index = 0 if sig["base"] == 0 else 1

    def get_input_details(self):
        return self.sig["ins"]

    def get_output_details(self):
        return self.sig["outs"]

    def __call__(self, **feeds):
        for name, value in feeds.items():
            self.interp.tensors[self.sig["ins"][name]["index"]][...] = value
        self.interp.invoke(self.sig)
        return {n: self.interp.tensors[d["index"]].copy() for n, d in self.sig["outs"].items()}


def run_generation(gen) -> tuple[list[str], object]:
    """(every text delta a `generate` generator yields, its GenerationResult)."""
    deltas = []
    while True:
        try:
            deltas.append(next(gen))
        except StopIteration as stop:
            return deltas, stop.value


# A real LiteRT delegate plugin (the load_delegate ABI: tflite_plugin_create_delegate) whose Prepare
# claims no node: the "loaded but useless" delegate, e.g. an Edge TPU library facing an uncompiled
# model. The struct is TfLiteDelegate's leading layout (data_, Prepare, three buffer-handle hooks, flags).
USELESS_DELEGATE_C = r"""
#include <stdint.h>
#include <stdlib.h>
typedef struct D { void* data; int (*prepare)(void*, struct D*); void* copy_from; void* copy_to; void* free_handle;
                   int64_t flags; void* opaque_builder; } D;
static int prepare(void* context, D* delegate) { (void)context; (void)delegate; return 0; }
D* tflite_plugin_create_delegate(char** keys, char** values, size_t n, void (*report)(const char*)) {
  (void)keys; (void)values; (void)n; (void)report;
  D* d = calloc(1, sizeof(D)); d->prepare = prepare; return d; }
void tflite_plugin_destroy_delegate(D* d) { free(d); }
"""


def useless_delegate_library(folder):
    """Compile USELESS_DELEGATE_C into folder/libuseless_delegate.so; None when no C compiler is here."""
    import shutil
    import subprocess
    from pathlib import Path

    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        return None
    src, lib = Path(folder) / "useless_delegate.c", Path(folder) / "libuseless_delegate.so"
    src.write_text(USELESS_DELEGATE_C)
    subprocess.run([cc, "-shared", "-fPIC", "-o", str(lib), str(src)], check=True, capture_output=True)
    return lib


JSON_CORPUS = ['{"name": "Ada", "age": 36, "tags": ["math", "poetry"]}', '{"city": "Paris", "unit": "celsius"}',
               "the cat sat on the mat and then slept", "true false null 0123456789 -+.eE"]


def byte_bpe_tokenizer():
    """A real byte-level BPE `tokenizers.Tokenizer` (~400 tokens, "<eos>" = 0) trained in milliseconds on
    JSON-like text: what a grammar engine needs (every byte spellable), wrapped as the device's TextTokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    from edgekit.device.tokenizer import TextTokenizer

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  special_tokens=["<eos>"], show_progress=False)
    tok.train_from_iterator(JSON_CORPUS * 20, trainer)
    return TextTokenizer(tok, [0])


def fake_usb_device(root, port: str, vendor: str, product: str, speed: str = "5000") -> None:
    """A USB device as sysfs lists it: <root>/sys/bus/usb/devices/<port>/{idVendor,idProduct,speed}."""
    from pathlib import Path

    dev = Path(root) / "sys/bus/usb/devices" / port
    dev.mkdir(parents=True, exist_ok=True)
    for name, value in (("idVendor", vendor), ("idProduct", product), ("speed", speed)):
        (dev / name).write_text(value + "\n")


class FakeLibraryLoader:
    """Stands in for ctypes.CDLL: `libraries` maps a path or name to the symbols it exports (name ->
    callable); anything else raises OSError like the dynamic linker; `broken` paths raise OSError with
    that text. Records every path it was asked to load."""

    def __init__(self, libraries: dict | None = None, broken: dict | None = None):
        self.libraries, self.broken, self.asked = libraries or {}, broken or {}, []

    def __call__(self, path: str):
        from types import SimpleNamespace

        self.asked.append(path)
        if path in self.broken:
            raise OSError(self.broken[path])
        if path not in self.libraries:
            raise OSError(f"{path}: cannot open shared object file: No such file or directory")
        return SimpleNamespace(**self.libraries[path])
