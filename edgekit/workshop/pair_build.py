"""`edgekit build --with-draft`: the recipe's teacher as the bundle's model and the recipe's distilled
student as its speculative-decoding draft (edgekit.core.bundle_pair).

The teacher is built as a bundle of its own (the recipe with `[student] mode = "teacher"`: export,
quantize, verify against PyTorch, reference data), the student as the recipe builds it (or an
already built student bundle is taken), then the two are paired. The teacher is the model served,
with its own verify record and reference data, so `serve --verify` checks what answers; the draft
only changes speed. Work folders: <work-dir>/teacher, <work-dir>/draft (and their bundles beside them).
May import: stdlib, edgekit.core, edgekit.device, edgekit.workshop.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from edgekit.core.bundle import Bundle, load_bundle
from edgekit.core.bundle_pair import pair_bundles
from edgekit.core.errors import BuildError
from edgekit.core.recipes import Recipe


def teacher_recipe(recipe: Recipe) -> Recipe:
    """`recipe` with the student replaced by the teacher itself (mode "teacher": nothing distilled)."""
    student = dict(recipe.data["student"], mode="teacher", keep_layers=(), auto_layers=0,
                   budget_minutes=(), budget_layers=())
    return dataclasses.replace(recipe, data=dict(recipe.data, student=student))


def with_auto_layers(recipe: Recipe, layers: int) -> Recipe:
    """`recipe` keeping `layers` teacher layers chosen by influence (build --auto-layers)."""
    student = dict(recipe.data["student"], mode="layer-drop", keep_layers=(), auto_layers=layers,
                   budget_minutes=(), budget_layers=())
    return dataclasses.replace(recipe, data=dict(recipe.data, student=student))


def run_pair_build(ctx, draft_bundle: Path | None = None) -> Bundle:
    """Build (or take) the draft, build the teacher, write the pair to ctx.out. `ctx` is a
    builder.BuildContext; `draft_bundle`: an existing student bundle of this recipe's teacher."""
    from edgekit.workshop.builder import run_build

    if ctx.recipe.task != "text-generation":
        raise BuildError(f"--with-draft needs a text-generation recipe; '{ctx.recipe.name}' is {ctx.recipe.task}")
    if ctx.recipe.student["mode"] == "teacher" and draft_bundle is None:
        raise BuildError(f"recipe '{ctx.recipe.name}' builds the teacher itself (mode \"teacher\"): there is no "
                         "student to draft; use a layer-drop recipe or --draft-bundle")
    work = ctx.work_dir
    if draft_bundle is None:
        ctx.log("== draft: the recipe's student")
        draft = run_build(dataclasses.replace(ctx, out=work / "draft-bundle", work_dir=work / "draft", tar=False,
                                              sign=None, support=None))
        source = {"draft": "built by this command", "recipe": ctx.recipe.name}
    else:
        draft = load_bundle(draft_bundle)
        source = {"draft": f"bundle {draft_bundle}"}
    ctx.log("== model: the teacher")
    teacher = run_build(dataclasses.replace(ctx, recipe=teacher_recipe(ctx.recipe), out=work / "teacher-bundle",
                                            work_dir=work / "teacher", tar=False, sign=None, support=None))
    ctx.log("== pairing the teacher with its draft")
    return pair_bundles(teacher, draft, ctx.out, tar=ctx.tar, sign=ctx.sign,
                        provenance=dict(source, command="edgekit build --with-draft"))
