"""`edgekit build` and `edgekit distill`: the workstation commands.

They import edgekit.workshop (torch, transformers, accelerate) inside the command only, so a device
install without torch can import this module and run every other command.
May import: stdlib, click, edgekit.core, edgekit.device; edgekit.workshop and accelerate lazily.
"""

from __future__ import annotations

from pathlib import Path

import click

from edgekit import __version__
from edgekit.cli.sign import signed_line
from edgekit.core.units import format_bytes


@click.command()
@click.option("--target", "-t", default="onnx-cpu", show_default=True,
              help="Target profile name (see `edgekit targets`) or path to a target .toml.")
@click.option("--recipe", "-r", default="smollm2-135m", show_default=True,
              help="Student recipe name (see `edgekit recipes`) or path to a recipe .toml.")
@click.option("--teacher", default=None,
              help="Override the recipe's teacher: a local HF folder, or shared:/path:/wheel:/hub: source.")
@click.option("--precision", default=None, help="Override the target's default precision (must be allowed by it).")
@click.option("--out", "-o", type=click.Path(path_type=Path), default=None,
              help="Bundle directory to write [default: ./dist/<recipe>-<target>]. An existing bundle there is replaced.")
@click.option("--work-dir", type=click.Path(path_type=Path), default=None,
              help="Folder for per-stage outputs [default: ./build/<recipe>-<target>].")
@click.option("--tar", is_flag=True, help="Also write <out>.tar, a single-file copy of the bundle.")
@click.option("--no-gate", is_flag=True, help="Package even if verification misses the target's limits (marked in the manifest).")
@click.option("--max-minutes", type=click.FloatRange(0, None), default=None,
              help="Distillation training budget in minutes (overrides the recipe); training still reaches the "
                   "recipe's min_steps floor (--min-steps 0 to stop at the budget).")
@click.option("--max-steps", type=click.IntRange(0, None), default=None, help="Distillation step limit (overrides the recipe).")
@click.option("--min-steps", type=click.IntRange(0, None), default=None,
              help="Train at least this many steps even when --max-minutes runs out first (overrides the recipe's "
                   "floor, which keeps a slow or busy CPU from producing a weaker student than the gate expects).")
@click.option("--compiler", default=None, metavar="PATH",
              help="Accelerator compiler for targets with a [compile] step (coral: edgetpu_compiler; "
                   "default: found on PATH, else the step is recorded as pending).")
@click.option("--chat-prompts", type=click.IntRange(1, None), default=None, metavar="N",
              help="Generate at most N chat prompts (teacher-written questions + tasks on the training text) "
                   "instead of the recipe's number: a quicker, weaker trial; the recipe's fixed held-out "
                   "questions are always kept.")
@click.option("--sign", "sign_key", type=click.Path(path_type=Path), default=None, metavar="KEY",
              help="Sign the bundle (and its .tar) with this Ed25519 private key (`edgekit keygen`): writes "
                   "manifest.sig, checked by `serve --trust`.")
@click.option("--with-draft", is_flag=True,
              help="Bundle the teacher as the model and the recipe's distilled student as its draft for speculative "
                   "decoding (`serve` then lets the student propose tokens the teacher checks).")
@click.option("--draft-bundle", type=click.Path(exists=True, path_type=Path), default=None, metavar="BUNDLE",
              help="With --with-draft: take this already built student bundle as the draft instead of building one.")
@click.option("--auto-layers", type=click.IntRange(2, None), default=None, metavar="N",
              help="The student keeps N teacher layers chosen by influence (overrides the recipe).")
def build(target, recipe, teacher, precision, out, work_dir, tar, no_gate, max_minutes, max_steps, min_steps, compiler,
          chat_prompts, sign_key, with_draft, draft_bundle, auto_layers):
    """Build a device bundle: distill -> export -> quantize -> verify -> package.

    Each stage writes to its own folder under --work-dir and is recorded (inputs and outputs
    with sha256, parameters, metrics, seconds) in the bundle's manifest.json. The bundle is
    written atomically: a failed build leaves any previous bundle untouched.
    """
    from edgekit.core.recipes import load_recipe
    from edgekit.core.targets import load_target

    tgt = load_target(target)
    rcp = load_recipe(recipe)
    prec = tgt.precision(precision)
    if draft_bundle is not None and not with_draft:
        raise click.UsageError("--draft-bundle needs --with-draft")
    if auto_layers is not None:
        from edgekit.workshop.pair_build import with_auto_layers

        rcp = with_auto_layers(rcp, auto_layers)
    signer = None
    if sign_key is not None:  # read the key before a long build, not after
        from functools import partial

        from edgekit.device.signing import load_private_key, signature_file

        signer = partial(signature_file, load_private_key(sign_key))
    from edgekit.workshop.teacher import teacher_from_cli

    source = teacher_from_cli(teacher) if teacher else rcp.teacher["source"]
    out = out or Path("dist") / f"{rcp.name}-{tgt.name}"
    work_dir = work_dir or Path("build") / f"{rcp.name}-{tgt.name}"

    from edgekit.workshop.builder import BuildContext, run_build

    log = lambda msg: click.echo(msg, err=True)  # noqa: E731
    log(f"edgekit {__version__}: recipe {rcp.name}, target {tgt.name} ({prec}), teacher {source}")
    ctx = BuildContext(target=tgt, recipe=rcp, teacher_source=source, precision=prec, out=out, work_dir=work_dir,
                       gate=not no_gate, tar=tar, log=log, max_minutes=max_minutes, max_steps=max_steps, min_steps=min_steps,
                       compiler=compiler, sign=signer, chat_prompts=chat_prompts)
    if with_draft:
        from edgekit.workshop.pair_build import run_pair_build

        bundle = run_pair_build(ctx, draft_bundle)
    else:
        bundle = run_build(ctx)
    size = sum(f["bytes"] for f in bundle.manifest["files"])
    click.echo(f"bundle written: {bundle.root} ({format_bytes(size)})" + (f"; {signed_line(bundle, None)}" if signer else ""))


def _int_list(value: str | None) -> list[int] | None:
    if value is None:
        return None
    try:
        return [int(v) for v in value.split(",") if v.strip()]
    except ValueError:
        raise click.BadParameter("expected comma-separated layer indices, e.g. 0,1,2,27,28,29") from None


@click.command()
@click.option("--recipe", "-r", default="smollm2-135m", show_default=True, help="Student recipe name or .toml path.")
@click.option("--teacher", default=None, help="Override the teacher: HF folder, .gguf file, hub id ORG/NAME, or KIND:VALUE.")
@click.option("--keep-layers", default=None, help="Teacher layers to keep, e.g. 0,1,2,27,28,29 (overrides the recipe).")
@click.option("--auto-layers", type=click.IntRange(2, None), default=None,
              help="Keep N layers chosen by influence score (overrides the recipe).")
@click.option("--ffn-ratio", type=click.FloatRange(0.05, 1.0), default=None, help="Share of FFN channels to keep.")
@click.option("--data", "data", multiple=True, help="Training text file or folder (repeatable; overrides the recipe).")
@click.option("--max-minutes", type=click.FloatRange(0, None), default=None,
              help="Training-time budget in minutes; training still reaches the recipe's min_steps floor "
                   "(--min-steps 0 to stop at the budget).")
@click.option("--max-steps", type=click.IntRange(0, None), default=None, help="Stop after this many optimizer steps.")
@click.option("--min-steps", type=click.IntRange(0, None), default=None,
              help="Train at least this many steps even when --max-minutes runs out first (overrides the recipe).")
@click.option("--checkpoint-every", type=click.IntRange(1, None), default=None, help="Steps between checkpoints.")
@click.option("--batch-size", type=click.IntRange(1, None), default=None,
              help="Windows per step per process (overrides the recipe); the global batch is this x processes.")
@click.option("--eval-every-minutes", type=click.FloatRange(0, None), default=2.0, show_default=True,
              help="Held-out perplexity for the learning curve every N training minutes (0 = only start and end).")
@click.option("--out", "-o", type=click.Path(path_type=Path), default=None,
              help="Student folder (Hugging Face format) [default: ./students/<recipe>].")
@click.option("--chat-prompts", type=click.IntRange(1, None), default=None, metavar="N",
              help="Generate at most N chat prompts (teacher-written questions + tasks on the training text) "
                   "instead of the recipe's number: a quicker, weaker trial; the recipe's fixed held-out "
                   "questions are always kept.")
@click.option("--restart", is_flag=True, help="Discard an existing checkpoint instead of resuming from it.")
def distill(recipe, teacher, keep_layers, auto_layers, ffn_ratio, data, max_minutes, max_steps, min_steps, checkpoint_every,
            batch_size, eval_every_minutes, chat_prompts, out, restart):
    """Distill the recipe's teacher into a smaller student (a standard Hugging Face folder).

    The student starts as a copy of chosen teacher layers and learns from the teacher's logits
    (temperature-scaled KL + next-token cross-entropy). Checkpoints go to <out>.checkpoints/;
    Ctrl-C saves one, and running the same command again resumes. Held-out perplexity of teacher
    and student is printed and saved in <out>/distill_metrics.json.
    For several GPUs: accelerate launch --multi_gpu --num_processes N -m edgekit.workshop.distill
    --recipe R [options] (docs/distillation.md, "Scale-out").
    """
    from edgekit.core.recipes import load_recipe

    rcp = load_recipe(recipe)
    if rcp.task != "text-generation":
        from edgekit.workshop.encoder import distill_encoder_cli

        distill_encoder_cli(rcp, teacher, _int_list(keep_layers), data, (max_minutes, max_steps, min_steps), out)
        return
    from edgekit.workshop.distill import Budget, chat_settings_from_recipe, run_distill, settings_from_recipe
    from edgekit.workshop.distill_settings import budget_limits
    from edgekit.workshop.teacher import teacher_from_cli

    keep = _int_list(keep_layers)
    d = rcp.data["distill"]
    budget = Budget(**budget_limits(d, max_minutes, max_steps, min_steps),
                    checkpoint_every=checkpoint_every or d["checkpoint_every"], eval_every_minutes=eval_every_minutes)
    settings = settings_from_recipe(rcp, teacher_from_cli(teacher) if teacher else None, list(data) or None,
                                    keep, auto_layers, ffn_ratio, max_minutes=budget.max_minutes)
    if batch_size:
        import dataclasses

        settings = dataclasses.replace(settings, batch_size=batch_size)
    if not settings.keep_layers and not settings.auto_layers:
        raise click.UsageError(f"recipe '{rcp.name}' keeps every layer; pass --keep-layers or --auto-layers")
    chat = chat_settings_from_recipe(rcp, settings, chat_prompts)
    out = out or Path("students") / rcp.name
    ckpt_dir = out.with_name(out.name + ".checkpoints")
    if restart and ckpt_dir.exists():
        import shutil

        shutil.rmtree(ckpt_dir, ignore_errors=True)  # under accelerate launch every process removes it
    log = lambda msg: click.echo(msg, err=True)  # noqa: E731
    m = run_distill(settings, budget, out, ckpt_dir, rcp.data["data"]["eval"], log=log, chat_settings=chat)
    from accelerate import PartialState

    if not PartialState().is_main_process:  # one summary from a multi-process (accelerate launch) run
        return
    for name, p in m["perplexity"].items():
        click.echo(f"{name}: perplexity teacher {p['teacher']:.3f}, student {p['student']:.3f} ({p['ratio']:.3f}x) "
                   f"on {p['eval_tokens']} held-out tokens")
    if "chat" in m:
        c = m["chat"]
        click.echo(f"held-out chat answers: perplexity teacher {c['teacher']['perplexity']:.3f}, student "
                   f"{c['student']['perplexity']:.3f} ({c['perplexity_ratio']:.3f}x); top-1 agreement teacher "
                   f"{c['teacher']['agreement']:.3f}, student {c['student']['agreement']:.3f}")
    ps = m["parameters"]
    click.echo(f"student: {ps['student']['total']:,} parameters ({ps['layer_ratio']:.0%} of the teacher's layer "
               f"parameters), layers {m['keep_layers']}, {m['steps']} steps in {m['train_minutes']:.1f} min -> {out}")
