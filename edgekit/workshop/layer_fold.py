"""Fold dropped layers into the student instead of dropping them outright (ReplaceMe-style, Shopkhoev et
al. 2025): each run of consecutive dropped layers i..j is replaced by one linear map T on the residual
stream, fitted on the teacher's activations and folded into the down projection of the kept layer
just before the run (layer i - 1), so the student's shape and export are unchanged.

In a pre-norm decoder layer the output is h = a + m, where a is the residual after attention and m the
MLP's output. After layer j the teacher's residual is H. The fit asks the kept layer's MLP to write
m @ T with a + m @ T close to H, i.e. T = argmin |w * (m T - (H - a))|^2 + s |T - I|^2 (ridge toward the
identity, which is plain dropping), each token weighted by w = 1 / |H| so the few tokens with huge
residual norms (attention sinks) do not decide the fit. Closed form, float64, no training.

Measured on SmolLM2-135M-Instruct -> 24 layers before any training (docs/distillation.md): held-out
chat-answer NLL 1.69 nats/token folded against 1.88 dropped (teacher 0.68); unweighted least squares
gave 1.90 (the sinks dominated it).
Works on Llama-family causal LMs (layers with `mlp.down_proj` and `post_attention_layernorm`).
May import: stdlib, torch, edgekit.core.
"""

from __future__ import annotations

import torch

from edgekit.core.errors import BuildError


def dropped_runs(keep_layers: list[int], n_layers: int) -> list[list[int]]:
    """Runs of consecutive teacher layers not in `keep_layers`, each preceded by a kept layer."""
    kept = set(keep_layers)
    runs: list[list[int]] = []
    for i in range(n_layers):
        if i in kept:
            continue
        if runs and runs[-1][-1] == i - 1:
            runs[-1].append(i)
        else:
            runs.append([i])
    if runs and runs[0][0] == 0:
        raise BuildError("cannot fold dropped layers into the student when layer 0 is dropped: keep layer 0")
    if runs and runs[-1][-1] == n_layers - 1:  # the model's last hidden state is returned normed: no target
        raise BuildError(f"cannot fold dropped layers into the student when the last layer ({n_layers - 1}) is "
                         "dropped: keep it")
    return runs


def _check_layer(layer) -> None:
    """Llama-style layers only: Gemma-style ones also norm the attention and MLP outputs (sandwich norms),
    so `a` and `m` below would not be what they are here."""
    llama_like = hasattr(layer, "mlp") and hasattr(layer.mlp, "down_proj") and hasattr(layer, "post_attention_layernorm")
    if not llama_like or hasattr(layer, "post_feedforward_layernorm"):
        raise BuildError(f"fold_dropped needs Llama-style pre-norm decoder layers ({type(layer).__name__} is not one)")


@torch.no_grad()
def _activations(teacher, runs: list[list[int]], batches: list[torch.Tensor]) -> list[tuple]:
    """For each run, (m, a, H) over all calibration tokens: the MLP output and post-attention residual of the
    kept layer before the run, and the residual after the run's last layer; float64, one row per token. One
    teacher pass over the calibration batches serves every run."""
    layers = teacher.model.layers
    mlp_out = {run[0] - 1: [] for run in runs}
    resid = {run[0] - 1: [] for run in runs}
    target = {run[-1]: [] for run in runs}
    hooks = []
    for before in mlp_out:
        hooks.append(layers[before].mlp.register_forward_hook(
            lambda _m, _a, out, got=mlp_out[before]: got.append(out.reshape(-1, out.shape[-1]))))
        hooks.append(layers[before].post_attention_layernorm.register_forward_pre_hook(
            lambda _m, args, got=resid[before]: got.append(args[0].reshape(-1, args[0].shape[-1]))))
    try:
        for ids in batches:
            states = teacher(input_ids=ids, output_hidden_states=True).hidden_states
            for last, got in target.items():
                got.append(states[last + 1].reshape(-1, states[0].shape[-1]))
    finally:
        for h in hooks:
            h.remove()
    return [tuple(torch.cat(x[k]).double() for x, k in ((mlp_out, run[0] - 1), (resid, run[0] - 1), (target, run[-1])))
            for run in runs]


def fit_map(mlp_out: torch.Tensor, resid: torch.Tensor, target: torch.Tensor, ridge: float) -> tuple[torch.Tensor, dict]:
    """(T, errors): the ridge least-squares map (see the module docstring) and the weighted relative
    residual error before (T = I) and after the fit. With FFN pruning (ffn_ratio < 1) the map is fitted on the
    teacher's full MLP output and folded into the pruned student's down projection: an approximation."""
    w = 1.0 / target.norm(dim=1, keepdim=True).clamp_min(1e-12)
    m, r = mlp_out * w, (target - resid) * w
    d = m.shape[1]
    eye = torch.eye(d, dtype=m.dtype, device=m.device)
    s = ridge * (m * m).sum() / d
    t = torch.linalg.solve(m.T @ m + s * eye, m.T @ r + s * eye)
    base = (r * r).sum()
    errors = {"dropped": float(((m - r) ** 2).sum() / base), "folded": float(((m @ t - r) ** 2).sum() / base)}
    return t, errors


@torch.no_grad()
def fold_dropped_layers(teacher, student, keep_layers: list[int], batches: list[torch.Tensor],
                        ridge: float = 0.1) -> list[dict]:
    """Fold each run of dropped layers into `student` (made from `teacher` with `keep_layers`), in place.
    Returns one record per run: the layers, the kept layer it went into, the residual errors."""
    keep = sorted(keep_layers)
    n = len(teacher.model.layers)
    runs = dropped_runs(keep, n)
    for run in runs:
        _check_layer(teacher.model.layers[run[0] - 1])
    records = []
    for run, acts in zip(runs, _activations(teacher, runs, batches)):
        before = run[0] - 1
        t, errors = fit_map(*acts, ridge)
        down = student.model.layers[keep.index(before)].mlp.down_proj
        down.weight.copy_((t.T @ down.weight.double()).to(down.weight.dtype))
        records.append({"layers": run, "into": before, "error_dropped": round(errors["dropped"], 4),
                        "error_folded": round(errors["folded"], 4)})
    return records
