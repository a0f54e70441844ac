"""The `edgekit` command line.

Device commands (serve, inspect, targets, recipes) import edgekit.core / edgekit.device only;
`build` imports edgekit.workshop (torch, transformers) lazily, inside the command, so a device
install without torch can run everything else. User mistakes (EdgekitError) print one line
`error: ...` and exit 1, never a traceback.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from edgekit import __version__
from edgekit.core.errors import EdgekitError
from edgekit.core.units import format_bytes, format_seconds
from edgekit.sign_cli import signed_line, trust_check, trust_option


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="edgekit")
def cli():
    """edgekit: distill, quantize and export language models for edge devices, then serve them
    offline while logging power and energy.

    \b
    Workstation:  edgekit build --target arm-cpu --recipe stories260k --tar
    Device:       edgekit verify stories260k-arm-cpu.tar
                  edgekit serve stories260k-arm-cpu.tar --verify
    """


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def targets(as_json):
    """List target profiles (targets/*.toml) with a one-line description each, and say when this machine
    lacks the runtime that serves a target's bundles (e.g. 32-bit ARM has no onnxruntime or LiteRT)."""
    from edgekit.core.targets import list_targets

    found = list_targets()
    if as_json:
        click.echo(json.dumps([{"name": t.name, "path": str(t.path), **t.data} for t in found], indent=2))
        return
    from edgekit.device.runtimes import missing_reason, status

    width = max(len(t.name) for t in found)
    missing = set()
    for t in found:
        q = t.data["quantization"]["default"]
        runtime = t.data["runtime"]["name"]
        absent = not status(runtime).installed
        missing |= {runtime} if absent else set()
        click.echo(f"{t.name:<{width}}  {t.format:<6} {q:<16} {t.description}"
                   + (f"  [cannot serve here: {runtime} missing]" if absent else ""))
    for runtime in sorted(missing):
        click.echo(f"note: {missing_reason(runtime)}", err=True)


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def recipes(as_json):
    """List student recipes (models/*.toml)."""
    from edgekit.core.recipes import list_recipes

    found = list_recipes()
    if as_json:
        click.echo(json.dumps([{"name": r.name, "path": str(r.path), **r.data} for r in found], indent=2))
        return
    width = max(len(r.name) for r in found)
    for r in found:
        click.echo(f"{r.name:<{width}}  {r.task:<18} {r.data['description']}")


@cli.command()
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
              help="Distillation training budget in minutes (overrides the recipe).")
@click.option("--max-steps", type=click.IntRange(0, None), default=None, help="Distillation step limit (overrides the recipe).")
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
def build(target, recipe, teacher, precision, out, work_dir, tar, no_gate, max_minutes, max_steps, compiler,
          chat_prompts, sign_key):
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
    bundle = run_build(BuildContext(target=tgt, recipe=rcp, teacher_source=source, precision=prec, out=out,
                                    work_dir=work_dir, gate=not no_gate, tar=tar, log=log,
                                    max_minutes=max_minutes, max_steps=max_steps, compiler=compiler,
                                    sign=signer, chat_prompts=chat_prompts))
    size = sum(f["bytes"] for f in bundle.manifest["files"])
    click.echo(f"bundle written: {bundle.root} ({format_bytes(size)})" + (f"; {signed_line(bundle, None)}" if signer else ""))


def _int_list(value: str | None) -> list[int] | None:
    if value is None:
        return None
    try:
        return [int(v) for v in value.split(",") if v.strip()]
    except ValueError:
        raise click.BadParameter("expected comma-separated layer indices, e.g. 0,1,2,27,28,29") from None


@cli.command()
@click.option("--recipe", "-r", default="smollm2-135m", show_default=True, help="Student recipe name or .toml path.")
@click.option("--teacher", default=None, help="Override the teacher: HF folder, .gguf file, hub id ORG/NAME, or KIND:VALUE.")
@click.option("--keep-layers", default=None, help="Teacher layers to keep, e.g. 0,1,2,27,28,29 (overrides the recipe).")
@click.option("--auto-layers", type=click.IntRange(2, None), default=None,
              help="Keep N layers chosen by influence score (overrides the recipe).")
@click.option("--ffn-ratio", type=click.FloatRange(0.05, 1.0), default=None, help="Share of FFN channels to keep.")
@click.option("--data", "data", multiple=True, help="Training text file or folder (repeatable; overrides the recipe).")
@click.option("--max-minutes", type=click.FloatRange(0, None), default=None, help="Training-time budget in minutes.")
@click.option("--max-steps", type=click.IntRange(0, None), default=None, help="Stop after this many optimizer steps.")
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
def distill(recipe, teacher, keep_layers, auto_layers, ffn_ratio, data, max_minutes, max_steps, checkpoint_every,
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

        distill_encoder_cli(rcp, teacher, _int_list(keep_layers), data, max_minutes, max_steps, out, restart)
        return
    from edgekit.workshop.distill import Budget, chat_settings_from_recipe, run_distill, settings_from_recipe
    from edgekit.workshop.teacher import teacher_from_cli

    keep = _int_list(keep_layers)
    d = rcp.data["distill"]
    budget = Budget(max_steps=d["max_steps"] if max_steps is None else max_steps,
                    max_minutes=d["max_minutes"] if max_minutes is None else max_minutes,
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


def _print_manifest(root: Path, m: dict, signed: str) -> None:
    model = m["model"]
    click.echo(f"bundle     {root}")
    click.echo(f"signature  {signed}")
    click.echo(f"name       {m['name']}  (task {m['task']}, edgekit {m['edgekit_version']}, schema {m['schema_version']})")
    click.echo(f"target     {m['target']['name']}: {m['target']['description']}")
    click.echo(f"model      {model['file']}  {model['format']} {model['precision']}  runtime {model['runtime']}"
               f" (delegate {model['delegate']})  context {model['max_sequence_length']} tokens")
    if model.get("extra_files") and model["format"] == "tflite" and m["task"] == "text-generation":
        sig = m.get("signature", {})
        click.echo(f"           signatures prefill ({sig.get('prefill_length')} tokens) and decode; "
                   f"embedding/rotary lookups on the host ({', '.join(model['extra_files'])})")
    if "parameters" in model:
        arch = model.get("architecture", {})
        click.echo(f"           {model['parameters']:,} parameters; " + ", ".join(f"{k} {v}" for k, v in arch.items()))
    click.echo(f"created    {m.get('created_utc', '?')}")
    click.echo("files")
    for f in m["files"]:
        click.echo(f"  {f['path']:<20} {format_bytes(f['bytes']):>10}  sha256 {f['sha256'][:16]}...")
    prov = m.get("provenance", {})
    if prov:
        click.echo(f"teacher    {prov['teacher']['source']}")
        click.echo("stages")
        for s in prov.get("stages", []):
            click.echo(f"  {s['name']:<10} {format_seconds(s['seconds']):>10}")
    verify = m.get("metrics", {}).get("verify")
    if verify:
        click.echo("verify")
        if "greedy_agreement" in verify:
            click.echo(f"  greedy agreement   {verify['greedy_agreement']:.3f} over {verify['greedy_tokens']} tokens"
                       f" ({len(verify['prompts'])} prompts; greedy text identical: {verify['greedy_prefix'] == 1.0})")
            click.echo(f"  max |logit diff|   {verify['max_logit_diff']:.4g}")
        if "min_cosine" in verify:
            click.echo(f"  cosine to PyTorch  min {verify['min_cosine']:.4f}, mean {verify['mean_cosine']:.4f}"
                       f" ({verify['sentences']} sentences)")
        if "sts_spearman" in verify:
            r = verify["sts_spearman"]
            click.echo(f"  STS-B Spearman     {r['exported']:.4f} vs fp32 {r['reference']:.4f} ({r['ratio']:.4f}x,"
                       f" {r['pairs']} pairs)")
        click.echo(f"  tokenizer match    {verify['tokenizer_match']}")
        if "perplexity" in verify:
            p = verify["perplexity"]
            click.echo(f"  perplexity         {p['exported']:.3f} vs fp32 {p['reference']:.3f} ({p['ratio']:.4f}x,"
                       f" {p['eval_tokens']} tokens)")
    tpu = m.get("metrics", {}).get("edgetpu")
    if tpu:
        click.echo("edge tpu")
        preds = tpu["prediction"]
        ops = sum(p["totals"]["ops"] for p in preds)
        mapped = sum(p["totals"]["ops_mapped"] for p in preds)
        macs = tpu.get("macs_per_token", {})
        click.echo(f"  predicted    {mapped}/{ops} ops in {len({p.get('file') for p in preds})} file(s); "
                   f"{100 * tpu.get('mac_share_on_tpu', 0):.1f}% of multiply-accumulates on the TPU"
                   + (f" ({macs['host_attention']:,} per token stay on the CPU for attention)"
                      if macs.get("host_attention") else ""))
        for p in preds:
            first = p["totals"]["first_unmapped"]
            if first:
                click.echo(f"  [{p.get('file', '')} {p['subgraph']}] first CPU op #{first['index']} {first['op']}: "
                           f"{first['status']}")
        pbytes = tpu.get("parameter_bytes_on_tpu", 0)
        click.echo(f"  parameters   {pbytes / 2**20:.2f} MiB on the TPU "
                   + ("(fits the ~8 MiB on-chip cache)" if pbytes <= 8 * 2**20 else
                      "(more than the ~8 MiB on-chip cache: the rest streams from host memory each call)"))
        comp = tpu.get("compiler", {})
        if comp.get("compiled"):
            click.echo(f"  compiled     {len(comp['files'])} file(s) (edgetpu_compiler {comp.get('version', '?')}): "
                       f"{comp.get('ops_on_tpu')} ops on the TPU, {comp.get('ops_on_cpu')} on the CPU, "
                       f"{len(comp.get('disagreements', []))} disagreements with the prediction")
        elif comp.get("pending"):
            click.echo("  compile step PENDING: edgetpu_compiler was not available at build time; the bundle runs")
            click.echo("  on the CPU. On an x86-64 Linux machine with Coral's edgetpu-compiler package, run:")
            click.echo(f"    edgekit coral compile {root}")
            click.echo(f"  (it runs `{comp['command'].split(' && ')[-1]}` and adds the result to the bundle)")
        else:
            click.echo(f"  compiler FAILED on {', '.join(comp.get('failed', []))}; see the build's compile stage logs")
        click.echo("  per-op table: edgekit coral check " + str(root))
        _print_edgetpu_files(root, m)
    gate = m.get("gate")
    if gate:
        state = "passed" if gate["passed"] else ("FAILED (packaged with --no-gate)" if not gate["enforced"] else "FAILED")
        click.echo(f"gate       {state}" + "".join(f"\n  - {f}" for f in gate.get("failures", [])))


def _print_edgetpu_files(root: Path, m: dict) -> None:
    """What the Edge TPU delegate could take, from the files themselves (edgetpu-custom-op nodes)."""
    from edgekit.device.tflite_inspect import edgetpu_files

    found = edgetpu_files(root, m)
    if found is not None:
        with_op, total = found
        click.echo(f"  delegate     {with_op} of {total} file(s) the Edge TPU delegate opens hold an edgetpu-custom-op"
                   + ("" if with_op else ": it would take nothing (serve refuses unless --allow-cpu-fallback)"))


@cli.command()
@click.argument("bundle", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print manifest.json (after verification) for scripts.")
@trust_option
def inspect(bundle, as_json, trust):
    """Verify a bundle (every file's sha256; with --trust its signature too) and print what it holds, who
    signed it and how it was built."""
    from edgekit.core.bundle import load_bundle

    check = trust_check(trust)
    b = load_bundle(bundle, check=check)
    if as_json:
        click.echo(json.dumps(b.manifest, indent=2))
    else:
        _print_manifest(b.root, b.manifest, signed_line(b, check))


from edgekit.coral_cli import coral as _coral  # noqa: E402  (command groups in their own modules)
from edgekit.serve_cli import serve as _serve  # noqa: E402
from edgekit.power_cli import power as _power  # noqa: E402
from edgekit.report_cli import report as _report  # noqa: E402
from edgekit.bench_cli import bench as _bench  # noqa: E402
from edgekit.verify_cli import verify as _verify  # noqa: E402
from edgekit.sign_cli import keygen as _keygen, sign as _sign  # noqa: E402
from edgekit.eval_cli import eval_cmd as _eval  # noqa: E402

cli.add_command(_coral)
cli.add_command(_serve)
cli.add_command(_power)
cli.add_command(_report)
cli.add_command(_bench)
cli.add_command(_verify)
cli.add_command(_keygen)
cli.add_command(_sign)
cli.add_command(_eval)


def main(argv: list[str] | None = None) -> None:
    """Entry point: runs the CLI, turning EdgekitError into one line on stderr and exit code 1."""
    try:
        cli.main(args=argv, prog_name="edgekit", standalone_mode=False)
    except click.exceptions.Abort as exc:  # click turns Ctrl-C into Abort; keep the reason if there is one
        reason = str(exc.__cause__ or "")
        click.echo(f"interrupted: {reason}" if reason else "aborted", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except EdgekitError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(1)
    except KeyboardInterrupt as exc:
        click.echo(f"interrupted: {exc}" if str(exc) else "interrupted", err=True)
        sys.exit(130)
