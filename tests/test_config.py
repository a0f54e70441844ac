"""Targets and recipes as data: every shipped file validates; mistakes are clear errors (fast tier)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from edgekit.core.errors import ConfigError
from edgekit.core.recipes import list_recipes, load_recipe
from edgekit.core.targets import list_targets, load_target

from conftest import run_cli

ONNX_CPU = Path(__file__).resolve().parent.parent / "targets" / "onnx-cpu.toml"


def test_shipped_targets_and_recipes_validate():
    assert {t.name for t in list_targets()} >= {"arm-cpu", "mobile-gpu", "coral", "onnx-cpu"}
    assert {r.name for r in list_recipes()} >= {"smollm2-135m", "stories260k", "minilm-l6"}
    coral = load_target("coral")
    assert coral.format == "tflite" and coral.precision() == "int8-full"
    assert coral.data["shapes"]["static"] is True
    assert load_recipe("minilm-l6").task == "feature-extraction"


def _write(tmp_path: Path, name: str, text: str) -> Path:
    p = tmp_path / f"{name}.toml"
    p.write_text(text)
    return p


def test_unknown_key_names_file_key_and_allowed(tmp_path):
    text = ONNX_CPU.read_text().replace("[runtime]", "[runtime]\ndelegat = \"none\"")
    p = _write(tmp_path, "onnx-cpu", text)
    with pytest.raises(ConfigError) as e:
        load_target(str(p))
    msg = str(e.value)
    assert str(p) in msg and "runtime.delegat" in msg and "did you mean 'delegate'" in msg
    assert "allowed keys here: name, delegate" in msg


def test_bad_value_lists_allowed_values(tmp_path):
    p = _write(tmp_path, "onnx-cpu", ONNX_CPU.read_text().replace('default = "int8-dynamic"', 'default = "int9"'))
    with pytest.raises(ConfigError, match=r"quantization.default': got 'int9'; allowed: 'fp32', 'fp16'"):
        load_target(str(p))


def test_wrong_type_and_range(tmp_path):
    p = _write(tmp_path, "onnx-cpu", ONNX_CPU.read_text().replace("greedy_tokens = 16", 'greedy_tokens = "16"'))
    with pytest.raises(ConfigError, match=r"verify.greedy_tokens': got '16'; expected an integer"):
        load_target(str(p))
    p = _write(tmp_path, "onnx-cpu", ONNX_CPU.read_text().replace("min_greedy_agreement = 0.9", "min_greedy_agreement = 1.5"))
    with pytest.raises(ConfigError, match=r"min_greedy_agreement': got 1.5; expected a number in \[0.0, 1.0\]"):
        load_target(str(p))


def test_cross_field_rules(tmp_path):
    p = _write(tmp_path, "onnx-cpu", ONNX_CPU.read_text().replace('name = "onnxruntime"', 'name = "litert"'))
    with pytest.raises(ConfigError, match="runtime.name': format 'onnx' runs on 'onnxruntime'"):
        load_target(str(p))
    p = _write(tmp_path, "onnx-cpu", ONNX_CPU.read_text().replace('default = "int8-dynamic"', 'default = "fp16"'))
    with pytest.raises(ConfigError, match="'fp16' is not in allowed"):
        load_target(str(p))


def test_name_must_match_file_and_missing_required(tmp_path):
    p = _write(tmp_path, "other", ONNX_CPU.read_text())
    with pytest.raises(ConfigError, match="must equal the file name 'other'"):
        load_target(str(p))
    p = _write(tmp_path, "onnx-cpu", ONNX_CPU.read_text().replace('format = "onnx"\n', ""))
    with pytest.raises(ConfigError, match="key 'format': missing required key"):
        load_target(str(p))


def test_recipe_errors(tmp_path):
    p = _write(tmp_path, "r", 'name = "r"\ndescription = "x"\ntask = "text-generation"\n[teacher]\nsource = "ftp:x"\n')
    with pytest.raises(ConfigError, match="teacher.source': got 'ftp:x'; expected KIND:VALUE"):
        load_recipe(str(p))
    p = _write(tmp_path, "r", 'name = "r"\ndescription = "x"\ntask = "text-generation"\n[teacher]\nsource = "path:x"\n'
               '[student]\nmode = "layer-drop"\n')
    with pytest.raises(ConfigError, match="keep_layers': mode 'layer-drop' needs"):
        load_recipe(str(p))
    with pytest.raises(ConfigError, match="unknown recipe 'nope'; available: .*stories260k"):
        load_recipe("nope")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_recipe(str(_write(tmp_path, "bad", "name = ")))


def test_adding_a_board_is_adding_a_toml_file(tmp_path, monkeypatch):
    text = ONNX_CPU.read_text().replace('name = "onnx-cpu"', 'name = "my-board"').replace(
        "ONNX Runtime on any CPU", "My board")
    _write(tmp_path, "my-board", text)
    monkeypatch.setenv("EDGEKIT_TARGETS_PATH", str(tmp_path))
    assert load_target("my-board").description.startswith("My board")
    res = run_cli("targets", env={"EDGEKIT_TARGETS_PATH": str(tmp_path)})
    assert res.returncode == 0 and "my-board" in res.stdout


def test_targets_command_lists_each_with_description():
    res = run_cli("targets")
    assert res.returncode == 0, res.stderr
    lines = res.stdout.strip().splitlines()
    for t in list_targets():
        (line,) = [ln for ln in lines if ln.startswith(t.name + " ")]
        assert t.description in line


def test_build_with_bad_target_or_typo_recipe_is_one_clear_line(tmp_path):
    res = run_cli("build", "--target", "nope", "--recipe", "stories260k", cwd=tmp_path)
    assert res.returncode == 1
    assert res.stderr.strip() == "error: unknown target 'nope'; available: arm-cpu, coral, mobile-gpu, onnx-cpu"
    bad = _write(tmp_path, "typo", 'name = "typo"\ndescription = "x"\ntask = "text-generation"\n'
                 '[teacher]\nsource = "shared:models/stories260k"\n[studnet]\nmode = "teacher"\n')
    res = run_cli("build", "--recipe", str(bad), cwd=tmp_path)
    assert res.returncode == 1 and "Traceback" not in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1
    assert f"{bad}: key 'studnet': unknown key (did you mean 'student'?)" in res.stderr


def test_thread_count_comes_from_flag_then_target_capped_at_allowed_cpus():
    from edgekit.device.runtime import available_cpus, resolve_threads

    arm = {"target": {"name": "arm-cpu", "runtime": {"threads": 4}}}
    onnx = {"target": {"name": "onnx-cpu", "runtime": {"threads": 0}}}
    assert resolve_threads(0, arm, cpus=8) == (4, "target arm-cpu runtime.threads")
    assert resolve_threads(2, arm, cpus=8) == (2, "--threads")
    threads, why = resolve_threads(0, arm, cpus=2)
    assert threads == 2 and "capped at the 2 CPUs" in why and "runtime.threads = 4" in why
    threads, why = resolve_threads(16, arm, cpus=3)
    assert threads == 3 and why.startswith("--threads = 16, capped")
    threads, why = resolve_threads(0, onnx, cpus=6)
    assert threads == 6 and "every CPU" in why
    assert 1 <= available_cpus() <= (os.cpu_count() or 1)


def test_log_names_differ_per_bundle_kind():
    from edgekit.core.bundle import bundle_log_name

    def m(target, precision):
        return {"name": "stories260k", "target": {"name": target}, "model": {"precision": precision}}

    names = {bundle_log_name(m(t, p)) for t, p in (("arm-cpu", "int8-dynamic"), ("coral", "int8-full"),
                                                  ("arm-cpu", "fp32"), ("onnx-cpu", "int8-dynamic"))}
    assert len(names) == 4 and "stories260k-coral-int8-full" in names
    assert bundle_log_name({"name": "a/../b", "target": {"name": "t"}, "model": {}}) == "a_.._b-t"


def test_fold_dropped_reaches_the_distill_settings_and_must_be_a_bool(tmp_path):
    from edgekit.workshop.distill_settings import settings_from_recipe

    base = 'name = "r"\ndescription = "x"\ntask = "text-generation"\n[teacher]\nsource = "path:x"\n[student]\nmode = "layer-drop"\nauto_layers = 3\n'
    assert not settings_from_recipe(load_recipe(str(_write(tmp_path, "r", base)))).fold_dropped
    on = settings_from_recipe(load_recipe(str(_write(tmp_path, "r", base + "fold_dropped = true\n"))))
    assert on.fold_dropped and on.key() != settings_from_recipe(load_recipe(str(_write(tmp_path, "r", base)))).key()
    with pytest.raises(ConfigError, match="fold_dropped"):
        load_recipe(str(_write(tmp_path, "r", base + 'fold_dropped = "yes"\n')))
