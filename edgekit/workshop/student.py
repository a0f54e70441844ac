"""Make a student from a teacher: keep a subset of layers, optionally prune FFN channels.

- Layer dropping (DistilBERT-style): `keep_layers` lists teacher layer indices to keep, or
  `select_layers_by_influence` picks them with a cheap score: a layer whose output hidden
  state is nearly parallel to its input (cosine ~ 1) changes little and is dropped first
  ("block influence", as in ShortGPT). The first and last layers are always kept.
- FFN pruning (Minitron-style): keep the `ffn_ratio` share of intermediate channels with the
  largest mean |activation| (input of down_proj / output dense) on calibration text.
Works on Llama-family causal LMs (model.model.layers) and BERT encoders (model.encoder.layer).
May import: stdlib, torch, transformers.
"""

from __future__ import annotations

import copy

import torch

from edgekit.core.errors import BuildError


def _layer_home(model) -> tuple[torch.nn.Module, str]:
    """(parent module, attribute name) of the transformer block list."""
    for path in ("model.layers", "encoder.layer", "bert.encoder.layer"):
        *parents, name = path.split(".")
        obj = model
        try:
            for part in parents:
                obj = getattr(obj, part)
            if isinstance(getattr(obj, name), torch.nn.ModuleList):
                return obj, name
        except AttributeError:
            continue
    raise BuildError(f"don't know where the layers of {type(model).__name__} are")


def _layers(model) -> torch.nn.ModuleList:
    parent, name = _layer_home(model)
    return getattr(parent, name)


def num_layers(model) -> int:
    return len(_layers(model))


def _set_layers(model, layers: list) -> None:
    parent, name = _layer_home(model)
    setattr(parent, name, torch.nn.ModuleList(layers))
    for new_idx, layer in enumerate(layers):
        attn = getattr(layer, "self_attn", None)
        if attn is not None and hasattr(attn, "layer_idx"):
            attn.layer_idx = new_idx  # the KV cache is indexed by position in the new stack
        if hasattr(layer, "layer_idx"):
            layer.layer_idx = new_idx
    cfg = model.config
    cfg.num_hidden_layers = len(layers)
    if getattr(cfg, "layer_types", None):
        cfg.layer_types = [cfg.layer_types[0]] * len(layers) if len(set(cfg.layer_types)) == 1 else None


@torch.no_grad()
def layer_influence(model, batches: list[torch.Tensor]) -> list[float]:
    """Per layer: mean (1 - cosine(input hidden, output hidden)) over calibration tokens."""
    scores = torch.zeros(num_layers(model))
    for ids in batches:
        hs = model(input_ids=ids, output_hidden_states=True).hidden_states
        for k in range(len(hs) - 1):
            cos = torch.nn.functional.cosine_similarity(hs[k], hs[k + 1], dim=-1)
            scores[k] += (1 - cos).mean()
    return (scores / len(batches)).tolist()


def select_layers_by_influence(model, batches: list[torch.Tensor], keep: int) -> list[int]:
    """Indices of the `keep` most influential layers (first and last always kept), ascending."""
    n = num_layers(model)
    if not 2 <= keep <= n:
        raise BuildError(f"cannot keep {keep} of {n} layers")
    scores = layer_influence(model, batches)
    middle = sorted(range(1, n - 1), key=lambda i: scores[i], reverse=True)[: keep - 2]
    return sorted([0, n - 1, *middle])


def _ffn_parts(layer):
    mlp = getattr(layer, "mlp", None)
    if mlp is not None and hasattr(mlp, "down_proj"):
        return [mlp.gate_proj, mlp.up_proj], mlp.down_proj  # Llama: down(act(gate) * up)
    if hasattr(layer, "intermediate"):
        return [layer.intermediate.dense], layer.output.dense  # BERT: out(act(dense))
    raise BuildError(f"don't know the FFN of {type(layer).__name__}")


@torch.no_grad()
def prune_ffn(model, batches: list[torch.Tensor], ratio: float) -> int:
    """Keep `ratio` of FFN channels per layer by mean |activation|; returns the new width."""
    layers = list(_layers(model))
    sums = [None] * len(layers)
    hooks = []
    for i, layer in enumerate(layers):
        _, down = _ffn_parts(layer)

        def hook(_mod, args, i=i):
            a = args[0].detach().abs().reshape(-1, args[0].shape[-1]).mean(0)
            sums[i] = a if sums[i] is None else sums[i] + a

        hooks.append(down.register_forward_pre_hook(hook))
    try:
        for ids in batches:
            model(input_ids=ids)
    finally:
        for h in hooks:
            h.remove()
    width = _ffn_parts(layers[0])[1].in_features
    keep = max(8, int(round(width * ratio / 8)) * 8)
    for layer, score in zip(layers, sums):
        idx = torch.topk(score, keep).indices.sort().values
        ups, down = _ffn_parts(layer)
        for lin in ups:
            lin.weight = torch.nn.Parameter(lin.weight[idx].clone())
            if lin.bias is not None:
                lin.bias = torch.nn.Parameter(lin.bias[idx].clone())
            lin.out_features = keep
        down.weight = torch.nn.Parameter(down.weight[:, idx].clone())
        down.in_features = keep
    model.config.intermediate_size = keep
    return keep


def make_student(teacher, keep_layers: list[int], ffn_ratio: float = 1.0,
                 calibration: list[torch.Tensor] | None = None):
    """A new model: a deep copy of `teacher` with only `keep_layers` (and pruned FFNs)."""
    n = num_layers(teacher)
    bad = [i for i in keep_layers if not 0 <= i < n]
    if bad:
        raise BuildError(f"keep_layers {bad} out of range: the teacher has {n} layers (0..{n - 1})")
    student = copy.deepcopy(teacher)
    kept = [copy.deepcopy(_layers(teacher)[i]) for i in sorted(keep_layers)]
    _set_layers(student, kept)
    if ffn_ratio < 1.0:
        if not calibration:
            raise BuildError("FFN pruning needs calibration text")
        prune_ffn(student, calibration, ffn_ratio)
    return student


def parameter_counts(model) -> dict:
    """Total, embedding and transformer-layer parameter counts (tied weights counted once)."""
    seen, total = set(), 0
    for p in model.parameters():
        if id(p) not in seen:
            seen.add(id(p))
            total += p.numel()
    layer_params = sum(p.numel() for p in _layers(model).parameters())
    return {"total": total, "layers": layer_params, "non_layer": total - layer_params}
