"""`edgekit eval` side by side: one row per metric, one column per model (teacher / student / bundle),
plus each column's ratio to the teacher's value.

Input: {column: result of edgekit.workshop.evaluate.eval_causal}. Perplexities are unitless (lower is
better); agreement and accuracy are fractions in [0, 1] (higher is better).
May import: stdlib, edgekit.core.
"""

from __future__ import annotations

REFERENCE = "teacher"


def sst2_results(result: dict) -> list[dict]:
    """Every SST-2 result of one model (one per prompt phrasing), the model's own phrasing first."""
    return [result["sst2"], *result.get("sst2_more", [])] if "sst2" in result else []


def _metrics(result: dict) -> dict[str, tuple[float, str, str]]:
    """{metric name: (value, better, detail)} of one result."""
    out = {}
    for name, r in result.get("perplexity", {}).items():
        out[f"perplexity: {name}"] = (r["perplexity"], "lower", f"{r['tokens']} tokens")
    if "chat" in result:
        c = result["chat"]
        detail = f"{c['examples']} examples, {c['tokens']} answer tokens"
        out["chat-answer perplexity"] = (c["perplexity"], "lower", detail)
        out["chat top-1 agreement"] = (c["agreement"], "higher", detail)
    for s in sst2_results(result):  # one row per prompt phrasing, so columns compare like with like
        out[f"SST-2 accuracy ({s['phrasing']})"] = (s["accuracy"], "higher", f"{s['sentences']} sentences, "
                                                    f"majority baseline {s['majority_baseline']:.3f}")
    for name, r in result.get("sts", {}).items():
        out[f"STS-B Spearman: {name}"] = (r["spearman"], "higher", f"{r['pairs']} pairs")
    return out


def compare(results: dict[str, dict]) -> dict:
    """{"models": {column: {model, evaluated_with}}, "rows": [{metric, better, detail, values, ratios}]}."""
    per = {col: _metrics(r) for col, r in results.items()}
    names = list(dict.fromkeys(n for m in per.values() for n in m))
    rows = []
    for name in names:
        values = {col: m[name][0] for col, m in per.items() if name in m}
        first = next(m[name] for m in per.values() if name in m)
        ref = values.get(REFERENCE)
        ratios = {col: round(v / ref, 4) for col, v in values.items() if col != REFERENCE and ref}
        rows.append({"metric": name, "better": first[1], "detail": first[2], "values": values, "ratios": ratios})
    models = {col: {"model": r["model"], "evaluated_with": r["evaluated_with"]} for col, r in results.items()}
    return {"models": models, "rows": rows}


def _cell(value) -> str:
    return "-" if value is None else f"{value:.4g}" if value >= 1000 else f"{value:.4f}"


def format_table(table: dict) -> list[str]:
    """Text lines: the columns' models, then the metric rows with ratio columns vs the teacher."""
    cols = list(table["models"])
    ratio_cols = [c for c in cols if c != REFERENCE] if REFERENCE in cols else []
    lines = [f"{c:<8} {m['model']}  [{m['evaluated_with']}]" for c, m in table["models"].items()]
    width = max([len(r["metric"]) for r in table["rows"]] + [6]) + 2
    head = f"{'metric':<{width}}" + "".join(f"{c:>12}" for c in cols)
    head += "".join(f"{c + '/' + REFERENCE:>18}" for c in ratio_cols)
    lines += ["", head]
    for r in table["rows"]:
        line = f"{r['metric']:<{width}}" + "".join(f"{_cell(r['values'].get(c)):>12}" for c in cols)
        line += "".join(f"{_ratio(r['ratios'].get(c)):>18}" for c in ratio_cols)
        lines.append(line)
    lines.append("")
    lines += [f"{r['metric']}: {r['detail']} ({r['better']} is better)" for r in table["rows"]]
    return lines


def _ratio(value) -> str:
    return "-" if value is None else f"{value:.3f}x"
