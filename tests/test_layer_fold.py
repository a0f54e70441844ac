"""Folding dropped layers into the student (edgekit.workshop.layer_fold); full tier: torch and the real
stories260k model. The fit is checked against a map known in advance, and on the real model the folded
student must be closer to the teacher than the plainly dropped one on text it was not fitted on."""

import pytest

from edgekit.core.errors import BuildError

pytestmark = pytest.mark.full
torch = pytest.importorskip("torch")


def test_dropped_runs_are_the_consecutive_gaps_and_layer_zero_must_stay():
    from edgekit.workshop.layer_fold import dropped_runs

    assert dropped_runs([0, 1, 4, 7, 8], 9) == [[2, 3], [5, 6]]
    assert dropped_runs([0, 1, 2], 3) == []
    with pytest.raises(BuildError, match="keep layer 0"):
        dropped_runs([1, 2], 3)
    with pytest.raises(BuildError, match="last layer"):
        dropped_runs([0, 1, 4], 6)
    from edgekit.workshop.distill_settings import DistillSettings

    plain = DistillSettings(teacher="t", keep_layers=[0, 1])
    assert DistillSettings(teacher="t", keep_layers=[0, 1], fold_dropped=True).key() != plain.key()  # never resumes the other


def test_fit_recovers_a_known_map_and_a_strong_ridge_stays_plain_dropping():
    from edgekit.workshop.layer_fold import fit_map

    g = torch.Generator().manual_seed(0)
    m = torch.randn(3000, 12, generator=g, dtype=torch.float64)
    resid = torch.randn(3000, 12, generator=g, dtype=torch.float64)
    known = torch.eye(12, dtype=torch.float64) + 0.3 * torch.randn(12, 12, generator=g, dtype=torch.float64)
    target = resid + m @ known
    t, errors = fit_map(m, resid, target, ridge=1e-9)
    assert torch.allclose(t, known, atol=1e-6)
    assert errors["folded"] < 1e-12 < 0.1 < errors["dropped"]
    target[:5] *= 1000  # a few huge-norm tokens off the map (attention sinks): weighted by 1/|H|, they barely move it
    t_sinks, _ = fit_map(m, resid, target, ridge=1e-9)
    assert torch.allclose(t_sinks, known, atol=0.02)
    unweighted = torch.linalg.lstsq(m, target - resid).solution
    assert not torch.allclose(unweighted, known, atol=0.5)
    t_ridge, errors_ridge = fit_map(m, resid, target, ridge=1e9)
    assert torch.allclose(t_ridge, torch.eye(12, dtype=torch.float64), atol=1e-4)
    assert errors_ridge["folded"] == pytest.approx(errors_ridge["dropped"], rel=1e-3)


def _windows(tokenizer, text: str, n: int, length: int = 64) -> list:
    ids = tokenizer(text).input_ids
    return [torch.tensor([ids[i * length:(i + 1) * length]]) for i in range(n)]


def test_folded_student_is_closer_to_the_teacher_than_the_dropped_one(shared_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from edgekit.workshop.layer_fold import fold_dropped_layers
    from edgekit.workshop.student import make_student

    path = shared_dir / "models" / "stories260k"
    teacher = AutoModelForCausalLM.from_pretrained(path).float().eval()
    tokenizer = AutoTokenizer.from_pretrained(path)
    text = (shared_dir / "data" / "tinystories" / "tinystories_v1_validation_head.txt").read_text()[:60000]
    windows = _windows(tokenizer, text, 48)
    fitted_on, held_out = windows[:32], windows[32:]
    keep = [0, 1, 4]
    dropped = make_student(teacher, keep).eval()
    folded = make_student(teacher, keep).eval()
    records = fold_dropped_layers(teacher, folded, keep, fitted_on)
    assert [(r["layers"], r["into"]) for r in records] == [([2, 3], 1)]
    assert records[0]["error_folded"] < records[0]["error_dropped"]
    changed = [n for n, p in folded.named_parameters() if not torch.equal(p, dict(dropped.named_parameters())[n])]
    assert changed == ["model.layers.1.mlp.down_proj.weight"]  # only the kept layer before the run changes
    from edgekit.workshop.textdata import perplexity

    held_out_windows = torch.cat(held_out)
    assert perplexity(folded, held_out_windows) < perplexity(dropped, held_out_windows)
