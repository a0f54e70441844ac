"""Generation defaults of a bundle: recipe [generation] over the teacher's generation_config.json over
edgekit's defaults, each with its source (fast tier: stdlib only, no torch)."""

from __future__ import annotations

import json
from pathlib import Path

from edgekit.workshop.generation_defaults import DEFAULT, RECIPE, TEACHER, resolve, teacher_values, write_generation
from edgekit.core.recipes import load_recipe

ROOT = Path(__file__).resolve().parent.parent


def _recipe(tmp_path: Path, generation: str, folder: str = "r1"):
    text = (ROOT / "models" / "stories260k.toml").read_text()
    head, _, tail = text.partition("[generation]")
    (tmp_path / folder).mkdir()
    path = tmp_path / folder / "stories260k.toml"
    path.write_text(head + "[generation]\n" + generation + "\n[verify]" + tail.split("[verify]", 1)[1])
    return load_recipe(str(path))


def _teacher(tmp_path: Path, config: dict, folder: str = "teacher") -> Path:
    d = tmp_path / folder
    d.mkdir()
    (d / "generation_config.json").write_text(json.dumps(config))
    return d


def test_teacher_sampling_keys_only_with_do_sample_and_repetition_penalty_covers_the_context(tmp_path):
    d = _teacher(tmp_path, {"do_sample": True, "temperature": 0.6, "top_p": 0.9, "top_k": 20,
                            "repetition_penalty": 1.3, "max_new_tokens": 200, "max_length": 4096})
    found, notes = teacher_values(d)
    assert found == {"temperature": 0.6, "top_p": 0.9, "top_k": 20, "repeat_penalty": 1.3, "repeat_last_n": -1,
                     "max_new_tokens": 200}
    assert notes == []
    greedy, notes = teacher_values(_teacher(tmp_path, {"temperature": 0.6, "top_p": 0.9}, "greedy"))
    assert greedy == {} and "do_sample is not true" in notes[0]


def test_out_of_range_teacher_values_are_left_out_with_a_note(tmp_path):
    found, notes = teacher_values(_teacher(tmp_path, {"do_sample": True, "temperature": 9.0, "top_k": 2.5}))
    assert found == {} and any("temperature = 9.0 not taken" in n for n in notes)
    assert any("top_k = 2.5 not taken" in n for n in notes)


def test_the_shared_stories260k_teacher_has_nothing_to_take(shared_dir):
    found, notes = teacher_values(shared_dir / "models" / "stories260k")
    assert found == {} and "keys: bos_token_id, eos_token_id" in notes[-1]


def test_recipe_keys_win_then_teacher_then_edgekit_default(tmp_path):
    recipe = _recipe(tmp_path, "max_new_tokens = 64\ntemperature = 0.0\nrepeat_penalty = 1.1")
    teacher = {"temperature": 0.6, "top_p": 0.9, "repeat_penalty": 1.3, "repeat_last_n": -1}
    values, sources = resolve(recipe, teacher)
    assert values == {"max_new_tokens": 64, "temperature": 0.0, "top_p": 0.9, "top_k": 0, "frequency_penalty": 0.0,
                      "presence_penalty": 0.0, "repeat_penalty": 1.1, "repeat_last_n": 64}
    assert sources == {"max_new_tokens": RECIPE, "temperature": RECIPE, "top_p": TEACHER, "top_k": DEFAULT,
                       "frequency_penalty": DEFAULT, "presence_penalty": DEFAULT, "repeat_penalty": RECIPE,
                       "repeat_last_n": DEFAULT}  # the teacher's whole-context window goes with its own penalty
    values, sources = resolve(_recipe(tmp_path, "", "r2"), teacher)
    assert (values["repeat_penalty"], values["repeat_last_n"]) == (1.3, -1)
    assert sources["repeat_last_n"] == TEACHER and sources["max_new_tokens"] == DEFAULT


def test_generation_json_and_manifest_record_carry_the_sources(tmp_path):
    class Tok:
        bos_token, eos_token, chat_template = "<s>", "</s>", None

    logged = []
    record = write_generation(tmp_path, _recipe(tmp_path, "top_k = 5"), tmp_path / "missing", Tok(), [2], logged.append)
    written = json.loads((tmp_path / "generation.json").read_text())
    assert written["top_k"] == 5 and written["sources"]["top_k"] == RECIPE and written["eos_token_ids"] == [2]
    assert written["sources"]["temperature"] == DEFAULT and written["bos_token"] == "<s>"
    assert record["defaults"] == {k: written[k] for k in record["defaults"]} and record["sources"] == written["sources"]
    assert logged == [f"    generation defaults: {tmp_path / 'missing'}: not a folder"]
