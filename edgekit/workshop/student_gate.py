"""The student-vs-teacher gate: the distilled student must stay close to its teacher on held-out
text (perplexity ratio) and on held-out chat prompts (perplexity of the teacher's answers and top-1
agreement with them), within the recipe's [gate] limits. A limit of 0 is not checked.
May import: stdlib, edgekit.core.
"""

from __future__ import annotations

from edgekit.core.errors import BuildError


def student_gate_failures(distill_metrics: dict, limits: dict) -> tuple[list[str], dict]:
    """(failures, the figures compared) for the distillation metrics against the recipe's limits."""
    fails, figures = [], {}
    text_limit = limits["max_text_perplexity_ratio"]
    for name, p in distill_metrics["perplexity"].items():
        figures[f"text:{name}"] = {"teacher": p["teacher"], "student": p["student"], "ratio": p["ratio"]}
        if text_limit and p["ratio"] > text_limit:
            fails.append(f"held-out {name}: student perplexity {p['student']:.3f} vs teacher {p['teacher']:.3f} "
                         f"= {p['ratio']:.3f}x > {text_limit:g}x")
    chat = distill_metrics.get("chat")
    chat_limits = limits["max_chat_perplexity_ratio"] or limits["min_chat_agreement"]
    if chat is None:
        if chat_limits:  # e.g. a recipe with [chat] enabled = false: nothing to compare, said so
            figures["chat"] = {"skipped": "no chat data was distilled on, so the chat limits do not apply"}
        return fails, figures
    t, s = chat["teacher"], chat["student"]
    figures["chat"] = {"teacher": t, "student": s, "perplexity_ratio": chat["perplexity_ratio"]}
    if limits["max_chat_perplexity_ratio"] and chat["perplexity_ratio"] > limits["max_chat_perplexity_ratio"]:
        fails.append(f"held-out chat answers: student perplexity {s['perplexity']:.3f} vs teacher "
                     f"{t['perplexity']:.3f} = {chat['perplexity_ratio']:.3f}x > {limits['max_chat_perplexity_ratio']:g}x")
    if limits["min_chat_agreement"] and s["agreement"] < limits["min_chat_agreement"]:
        fails.append(f"held-out chat answers: student top-1 agreement {s['agreement']:.3f} (teacher "
                     f"{t['agreement']:.3f}) < {limits['min_chat_agreement']:g}")
    return fails, figures


def apply_student_gate(distill_metrics: dict, limits: dict, enforced: bool, log) -> dict:
    """The gate's record for the manifest; raises BuildError when it fails and is enforced."""
    fails, figures = student_gate_failures(distill_metrics, limits)
    record = {"passed": not fails, "enforced": enforced, "failures": fails, "limits": dict(limits), "figures": figures}
    if fails and enforced:
        raise BuildError("student-vs-teacher gate failed: " + "; ".join(fails) + ". The trained student is kept "
                         "in the work dir: rerun with --no-gate to package it anyway, or with a longer --max-minutes "
                         "(training resumes, unless the longer budget changes the recipe's depth)")
    for f in fails:
        log(f"warning: student-vs-teacher gate not met (packaged anyway, --no-gate): {f}")
    if not fails:
        log("student-vs-teacher gate passed: " + "; ".join(_summary(figures)))
    return record


def _summary(figures: dict) -> list[str]:
    out = [f"{k[5:]} {v['ratio']:.3f}x" for k, v in figures.items() if k.startswith("text:")]
    if "chat" in figures and "skipped" not in figures["chat"]:
        c = figures["chat"]
        out.append(f"chat answers {c['perplexity_ratio']:.3f}x, agreement {c['student']['agreement']:.3f} "
                   f"(teacher {c['teacher']['agreement']:.3f})")
    return out
