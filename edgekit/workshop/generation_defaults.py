"""Serve's generation defaults for a bundle: the recipe's [generation] table over the teacher's
generation_config.json (Hugging Face) over edgekit's own defaults, each value with its source.

Taken from the teacher's generation_config.json where present:
  max_new_tokens           as is (max_length is not taken: it counts the prompt too)
  repetition_penalty       -> repeat_penalty, with repeat_last_n = -1 (transformers penalises every
                              token of the context, not a window)
  temperature, top_p, top_k only with do_sample = true (transformers decodes greedily otherwise and
                              ignores them)
A value outside the recipe schema's bounds is left out, with a note. A key the recipe sets
explicitly (in its TOML file, not by the schema's default filling) always wins.
May import: stdlib, edgekit.core.
"""

from __future__ import annotations

import json
from pathlib import Path

from edgekit.core import tomlfiles
from edgekit.core.recipes import SCHEMA, Recipe

TEACHER_FILE = "generation_config.json"
RECIPE, TEACHER, DEFAULT = "recipe [generation]", "teacher " + TEACHER_FILE, "edgekit default"


def _fits(spec, value) -> bool:
    """Whether a JSON value is of the schema field's kind (an int for an int field) and in its bounds."""
    if isinstance(value, bool) or not isinstance(value, int if spec.kind is int else (int, float)):
        return False
    return (spec.minimum is None or value >= spec.minimum) and (spec.maximum is None or value <= spec.maximum)


def teacher_values(folder: Path) -> tuple[dict, list[str]]:
    """(generation defaults found in `folder`/generation_config.json, notes on what was not taken)."""
    path = Path(folder) / TEACHER_FILE
    if not path.is_file():
        return {}, [f"no {TEACHER_FILE} in {folder}"]
    try:
        cfg = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        return {}, [f"{path}: unreadable ({exc})"]
    found, notes = {}, []
    if "max_new_tokens" in cfg:
        found["max_new_tokens"] = cfg["max_new_tokens"]
    if cfg.get("repetition_penalty") not in (None, 1.0):
        found["repeat_penalty"], found["repeat_last_n"] = cfg["repetition_penalty"], -1
    sampling = [k for k in ("temperature", "top_p", "top_k") if k in cfg]
    if cfg.get("do_sample") is True:
        found.update({k: cfg[k] for k in sampling})
    elif sampling:
        notes.append(f"{path}: {', '.join(sampling)} not taken: do_sample is not true (greedy)")
    fields = SCHEMA.fields["generation"].fields
    for key in list(found):
        spec, value = fields[key], found[key]
        if not _fits(spec, value):
            notes.append(f"{path}: {key} = {value!r} not taken (recipe schema allows {spec.describe()})")
            del found[key]
    if not found:
        notes.append(f"{path}: no generation defaults to take (keys: {', '.join(sorted(cfg)) or 'none'})")
    return found, notes


def resolve(recipe: Recipe, teacher: dict) -> tuple[dict, dict]:
    """(values, sources) for every [generation] key: set in the recipe file, else the teacher's, else
    the schema default."""
    explicit = set(tomlfiles.read(recipe.path).get("generation", {})) if recipe.path.is_file() else set()
    values, sources = {}, {}
    for key, value in recipe.data["generation"].items():
        if key in explicit:
            values[key], sources[key] = value, RECIPE
        elif key in teacher:
            kind = SCHEMA.fields["generation"].fields[key].kind
            values[key], sources[key] = kind(teacher[key]), TEACHER
        else:
            values[key], sources[key] = value, DEFAULT
    if sources["repeat_last_n"] == TEACHER and sources["repeat_penalty"] != TEACHER:
        # the teacher's whole-context window belongs to the teacher's penalty, not to the recipe's
        values["repeat_last_n"], sources["repeat_last_n"] = recipe.data["generation"]["repeat_last_n"], DEFAULT
    return values, sources


def write_generation(staging: Path, recipe: Recipe, teacher_dir: Path, tokenizer, eos: list[int], log) -> dict:
    """Write `staging`/generation.json (serve's defaults with their sources, the tokenizer's special
    tokens and chat template); returns the manifest's `generation` record."""
    teacher, notes = teacher_values(teacher_dir) if teacher_dir.is_dir() else ({}, [f"{teacher_dir}: not a folder"])
    for note in notes:
        log(f"    generation defaults: {note}")
    values, sources = resolve(recipe, teacher)
    template = getattr(tokenizer, "chat_template", None)
    chat = {"chat_template": template} if template else {}
    specials = {k: getattr(tokenizer, k) for k in ("bos_token", "eos_token")
                if isinstance(getattr(tokenizer, k, None), str)}
    (staging / "generation.json").write_text(json.dumps(
        {**values, "sources": sources, "eos_token_ids": eos, **specials, **chat}, indent=2) + "\n")
    return {"defaults": values, "sources": sources, "teacher_config_notes": notes}
