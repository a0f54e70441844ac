"""Distillation settings from a recipe and the CLI: what determines a run (hashed for resume), the
budget, the depth chosen for the budget, and the chat-data settings. No torch here, so a device
install can find a recipe's held-out chat examples (`edgekit eval BUNDLE`).
May import: stdlib, edgekit.core, edgekit.workshop.textdata, edgekit.workshop.chatdata.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from edgekit.workshop import textdata


# Fields added after runs were already on disk: left out of the resume key while their switch is off.
_LEFT_OUT_WHEN_OFF = {"fit_on_chip": ("fit_on_chip", "lm_head_on_host"), "on_policy": ("on_policy", "on_policy_tokens"),
                      "fold_dropped": ("fold_dropped",)}


@dataclass
class DistillSettings:
    """Everything that determines a run (hashed to decide whether a checkpoint can resume)."""

    teacher: str
    keep_layers: list[int]  # teacher layer indices to keep; empty = choose `auto_layers` by influence
    auto_layers: int = 0
    teacher_file: str = ""
    teacher_sha256: str = ""
    ffn_ratio: float = 1.0
    temperature: float = 2.0
    kl_weight: float = 1.0
    ce_weight: float = 0.5
    hidden_weight: float = 0.0
    learning_rate: float = 3e-4
    batch_size: int = 4
    seq_len: int = 128
    data: list[str] = field(default_factory=list)
    eval_fraction: float = 0.05
    seed: int = 0
    chat_key: str = ""  # key of the chat data (edgekit.workshop.chatdata.ChatSettings); "" = text only
    chat_fraction: float = 0.0
    chat_seq_len: int = 256
    layer_reason: str = ""
    fit_on_chip: str = ""  # accelerator whose on-chip cache sets the depth (edgekit.core.coral_fit); "" = none
    lm_head_on_host: bool = False  # with fit_on_chip: the LM head does not take cache space
    on_policy: float = 0.0  # share of chat steps on answers the student samples (edgekit.workshop.on_policy)
    on_policy_tokens: int = 48  # longest answer the student samples on such a step
    fold_dropped: bool = False  # dropped layers folded into the kept ones (edgekit.workshop.layer_fold)

    def key(self) -> str:
        fields = asdict(self)
        fields.pop("layer_reason")  # words only: a longer budget with the same depth resumes
        for switch, group in _LEFT_OUT_WHEN_OFF.items():  # keys of runs that predate these fields stay the same
            if not fields[switch]:
                for name in group:
                    fields.pop(name)
        return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:16]


@dataclass
class Budget:
    """When to stop and how often to checkpoint/evaluate (not part of the resume key)."""

    max_steps: int = 0  # 0 = no step limit
    max_minutes: float = 0.0  # 0 = no time limit
    min_steps: int = 0  # trained even past max_minutes (max_steps still caps); 0 = none
    checkpoint_every: int = 50
    eval_every_minutes: float = 2.0
    eval_tokens: int = 4096


def budget_limits(distill: dict, max_minutes: float | None = None, max_steps: int | None = None,
                  min_steps: int | None = None) -> dict:
    """The recipe's [distill] max_minutes / max_steps / min_steps, each replaced by its argument when that
    is not None (a CLI override)."""
    given = {"max_minutes": max_minutes, "max_steps": max_steps, "min_steps": min_steps}
    return {k: distill[k] if v is None else v for k, v in given.items()}


def layers_for_budget(student: dict, max_minutes: float) -> tuple[int, str]:
    """(layers to keep, why) for a training budget: short budgets drop fewer layers, because a deep cut
    needs long training to heal (recipe `budget_minutes` / `budget_layers`; `auto_layers` above)."""
    for minutes, layers in zip(student["budget_minutes"], student["budget_layers"]):
        if 0 < max_minutes <= minutes:
            return layers, (f"{layers} layers: the recipe keeps {layers} for budgets up to {minutes:g} min "
                            f"and this budget is {max_minutes:g} min")
    if student["budget_minutes"]:
        return student["auto_layers"], (f"{student['auto_layers']} layers: the recipe's choice for budgets over "
                                         f"{student['budget_minutes'][-1]:g} min or unlimited")
    return student["auto_layers"], ""


def settings_from_recipe(recipe, teacher: str | None = None, data: list[str] | None = None,
                         keep_layers: list[int] | None = None, auto_layers: int | None = None,
                         ffn_ratio: float | None = None, max_minutes: float | None = None) -> DistillSettings:
    """Settings from a recipe; non-None arguments (CLI options) override it. `max_minutes` (the
    training budget) chooses the number of layers when the recipe ties it to the budget."""
    d, st, t = recipe.data["distill"], recipe.student, recipe.teacher
    reason, fit = "", ""
    if keep_layers is None and auto_layers is None:
        keep_layers, auto_layers, fit = st["keep_layers"], st["auto_layers"], st["fit_on_chip"]
        if not keep_layers and auto_layers:
            auto_layers, reason = layers_for_budget(st, d["max_minutes"] if max_minutes is None else max_minutes)
    c = recipe.data["chat"]
    return DistillSettings(
        teacher=teacher or t["source"],
        teacher_file="" if teacher else t["file"],
        teacher_sha256="" if teacher else t["sha256"],
        keep_layers=list(keep_layers or []),
        auto_layers=auto_layers or 0,
        ffn_ratio=ffn_ratio if ffn_ratio is not None else st["ffn_ratio"], fold_dropped=st["fold_dropped"],
        temperature=d["temperature"], kl_weight=d["kl_weight"], ce_weight=d["ce_weight"],
        hidden_weight=d["hidden_weight"], learning_rate=d["learning_rate"], batch_size=d["batch_size"],
        seq_len=d["seq_len"], data=list(data or recipe.data["data"]["train"]), layer_reason=reason,
        eval_fraction=d["eval_fraction"],
        chat_fraction=c["fraction"] if c["enabled"] else 0.0, chat_seq_len=c["seq_len"],
        on_policy=c["on_policy"] if c["enabled"] else 0.0, on_policy_tokens=c["on_policy_tokens"],
        fit_on_chip=fit, lm_head_on_host=bool(fit) and recipe.data["edgetpu"]["lm_head"] == "host",
    )


def _local_fingerprint(settings: DistillSettings) -> list:
    """Sizes and modification times of a local teacher's files (a recipe teacher is pinned by sha256;
    a --teacher folder can change in place, and its chat data must then be made again)."""
    if settings.teacher_sha256 or not settings.teacher.startswith("path:"):
        return []
    root = Path(settings.teacher[5:])
    paths = sorted(root.iterdir()) if root.is_dir() else [root]
    return [[p.name, p.stat().st_size, int(p.stat().st_mtime)] for p in paths if p.is_file()]


def capped_counts(counts: list[int], cap: int | None) -> list[int]:
    """`counts` scaled down in proportion to add up to exactly `cap` (rounded cumulatively, so a kind
    with a count of 0 stays 0); unchanged without a cap or when they already fit."""
    total = sum(counts)
    if cap is None or cap >= total:
        return list(counts)
    ends = [round(cap * sum(counts[: i + 1]) / total) for i in range(len(counts))]
    return [end - start for start, end in zip([0, *ends[:-1]], ends)]


def chat_settings_from_recipe(recipe, settings: DistillSettings, max_prompts: int | None = None):
    """The recipe's chat-data settings for this teacher (None when the recipe distills text only);
    also stores their key in `settings` so a checkpoint never resumes on other chat data.
    `max_prompts` caps the generated prompts (split as the recipe splits them)."""
    from edgekit.workshop.chatdata import ChatSettings

    c = recipe.data["chat"]
    if not c["enabled"]:
        return None
    ident = json.dumps([settings.teacher, settings.teacher_file, settings.teacher_sha256, _local_fingerprint(settings)])
    files = textdata.expand_paths(list(settings.data))
    asked, facts, tasks, judged = capped_counts([c["self_instruct"], c["fact_questions"], c["corpus_prompts"],
                                                 c["classify_prompts"]], max_prompts)
    cs = ChatSettings(teacher_key=hashlib.sha256(ident.encode()).hexdigest()[:16], topics=list(c["topics"]),
                      self_instruct=asked, fact_questions=facts, corpus_prompts=tasks, classify_prompts=judged,
                      corpus_files=list(settings.data), heldout_prompts=list(c["heldout_prompts"]),
                      heldout_fraction=c["heldout_fraction"], answer_tokens=c["answer_tokens"], seed=settings.seed,
                      eval_fraction=settings.eval_fraction, files_sha256=[hashlib.sha256(f.read_bytes()).hexdigest() for f in files])
    settings.chat_key = cs.key()
    return cs
