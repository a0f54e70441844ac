"""Judge a machine's figures on a bundle's reference data against the target's limits.

`check_bundle(loaded)` measures (reference.measure) and returns a result dict: `passed`, one entry
per check with the device figure, PyTorch's, the workstation export's (measured at build time with
the same code) and the limit, plus one-line texts for people. A bundle without reference data gives
`passed` None and `reason`. Logits in natural-log units, perplexity exp(mean nats), seconds.
May import: stdlib, numpy, edgekit.core, edgekit.device.
"""

from __future__ import annotations

import platform
import time

from edgekit.device.reference import Reference, bundle_reference, measure

NO_REFERENCE = ("this bundle carries no reference data (built before edgekit stored reference.npz); "
                "rebuild it to verify on this device")


def _line(name: str, passed: bool | None, text: str, **numbers) -> dict:
    verdict = "recorded, not gated" if passed is None else ("pass" if passed else "FAIL")
    return {"name": name, "passed": passed, **numbers, "text": f"{text}: {verdict}"}


def _ws(figures: dict, key: str, fmt: str) -> str:
    value = figures.get(key)
    return "" if value is None else f"; workstation export {value:{fmt}}"


def _tokenizer_line(match: bool, what: str) -> dict:
    verb = "equal" if match else "DIFFER FROM"
    return _line("tokenizer_match", match, f"tokenizer ids {verb} the build's for {what}", device=match)


def _causal_checks(dev: dict, ref: Reference, limits: dict, ws: dict) -> list[dict]:
    out = [_tokenizer_line(dev["tokenizer_match"], f"{len(ref.meta['prompts'])} prompts")]
    lim = limits.get("max_logit_diff")
    if lim is not None:
        out.append(_line("max_logit_diff", dev["max_logit_diff"] <= lim,
                         f"max |logit diff| {dev['max_logit_diff']:.4f} (device vs PyTorch on its "
                         f"top-{ref.meta['top_k']} tokens{_ws(ws, 'max_logit_diff', '.4f')}) <= {lim:g}",
                         device=dev["max_logit_diff"], workstation=ws.get("max_logit_diff"), limit=lim))
    lim = limits.get("min_greedy_agreement")
    if lim is not None:
        out.append(_line("greedy_agreement", dev["greedy_agreement"] >= lim,
                         f"greedy agreement {dev['greedy_agreement']:.3f} "
                         f"({dev['greedy_matched']}/{dev['greedy_total']} of PyTorch's greedy tokens"
                         f"{_ws(ws, 'greedy_agreement', '.3f')}) >= {lim:g}",
                         device=dev["greedy_agreement"], pytorch=1.0, workstation=ws.get("greedy_agreement"),
                         limit=lim))
    lim, torch_ppl = limits.get("max_perplexity_ratio"), ref.meta.get("pytorch", {}).get("perplexity")
    if lim is not None and torch_ppl and "perplexity" in dev:
        ratio = dev["perplexity"] / torch_ppl
        tokens = ref.meta["pytorch"]["tokens"]
        out.append(_line("perplexity_ratio", ratio <= lim,
                         f"perplexity ratio {ratio:.4f} (device {dev['perplexity']:.4f} vs PyTorch {torch_ppl:.4f} on "
                         f"{tokens} tokens{_ws(ws, 'perplexity', '.4f')}) <= {lim:g}", device=dev["perplexity"],
                         pytorch=torch_ppl, workstation=ws.get("perplexity"), ratio=round(ratio, 4), limit=lim))
    out.append(_line("greedy_prefix", None, f"free-running greedy prefix {dev['greedy_prefix']:.3f} (share of "
                     f"PyTorch's tokens before the first difference, worst prompt{_ws(ws, 'greedy_prefix', '.3f')})",
                     device=dev["greedy_prefix"], workstation=ws.get("greedy_prefix")))
    return out


def _encoder_checks(dev: dict, ref: Reference, limits: dict, ws: dict) -> list[dict]:
    out = [_tokenizer_line(dev["tokenizer_match"], f"{dev['sentences']} sentences")]
    lim = limits.get("min_cosine")
    if lim is not None:
        out.append(_line("min_cosine", dev["min_cosine"] >= lim,
                         f"min cosine to PyTorch {dev['min_cosine']:.5f} (mean {dev['mean_cosine']:.5f} over "
                         f"{dev['sentences']} sentences{_ws(ws, 'min_cosine', '.5f')}) >= {lim:g}",
                         device=dev["min_cosine"], pytorch=1.0, workstation=ws.get("min_cosine"), limit=lim))
    return out


def judge(dev: dict, ref: Reference, limits: dict) -> list[dict]:
    """One entry per check; `passed` None marks a figure that is recorded but not gated."""
    ws = ref.meta.get("workstation", {}).get("figures", {})
    return (_causal_checks if ref.kind == "causal" else _encoder_checks)(dev, ref, limits, ws)


def check_model(model, tokenizer, ref: Reference, limits: dict, clock=time.perf_counter) -> dict:
    """Measure `model` on `ref` and judge it: {passed, checks, figures, seconds, machine, workstation}."""
    t0 = clock()
    figures = measure(model, tokenizer, ref)
    checks = judge(figures, ref, limits)
    ws = ref.meta.get("workstation", {})
    return {"passed": all(c["passed"] is not False for c in checks), "checks": checks, "figures": figures,
            "seconds": round(clock() - t0, 3), "machine": platform.machine(),
            "workstation": {k: ws.get(k) for k in ("machine", "runtime")}}


def check_bundle(loaded, clock=time.perf_counter) -> dict:
    """Check a LoadedModel against its bundle's reference data and the target's [verify] limits."""
    ref = bundle_reference(loaded.bundle)
    if ref is None:
        return {"passed": None, "reason": NO_REFERENCE, "checks": []}
    limits = loaded.bundle.manifest["target"].get("verify", {})
    return check_model(loaded.model, loaded.tokenizer, ref, limits, clock=clock)


def summary_lines(result: dict, header: str) -> list[str]:
    """Lines for people: header, one per check, and the verdict."""
    if result["passed"] is None:
        return [header, f"  {result['reason']}"]
    lines = [header] + [f"  {c['text']}" for c in result["checks"]]
    verdict = "passed" if result["passed"] else "FAILED"
    ws = result["workstation"].get("machine")
    return lines + [f"{verdict} on {result['machine']} in {result['seconds']:.2f} s"
                    + (f" (workstation figures from {ws})" if ws else "")]
