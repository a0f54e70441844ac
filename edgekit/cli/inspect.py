"""`edgekit inspect BUNDLE`: verify a bundle and print what it holds, who signed it and how it was built.

Sizes in bytes (printed KiB/MiB), stage times in seconds. May import: stdlib, click, edgekit.core,
edgekit.device.
"""

from __future__ import annotations

import json
from pathlib import Path

import click

from edgekit.cli.sign import signed_line, trust_check, trust_option
from edgekit.core.units import format_bytes, format_seconds


@click.command()
@click.argument("bundle", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print manifest.json (after verification) for scripts.")
@click.option("--board", default=None, metavar="NAME",
              help="Also predict prefill and decode tokens/s on this board (boards/NAME.toml; e.g. rpi5); with "
                   "--json under the key predicted_speed.")
@trust_option
def inspect(bundle, as_json, board, trust):
    """Verify a bundle (every file's sha256; with --trust its signature too) and print what it holds, who
    signed it and how it was built; with --board, its predicted speed there next to published figures."""
    from edgekit.core.boards import load_board
    from edgekit.core.bundle import load_bundle

    target_board = load_board(board) if board else None  # an unknown name: one line listing the known boards
    check = trust_check(trust)
    b = load_bundle(bundle, check=check)
    rec = None
    if target_board is not None:
        from edgekit.device.speed import predict

        rec = predict(b.root, b.manifest, target_board)
    if as_json:
        click.echo(json.dumps(dict(b.manifest, predicted_speed=rec) if rec else b.manifest, indent=2))
        return
    print_manifest(b.root, b.manifest, signed_line(b, check))
    if rec:
        print_speed(rec, target_board)


def print_manifest(root: Path, m: dict, signed: str) -> None:
    """The human-readable manifest: model, files, stages, verify figures, Edge TPU facts, gate."""
    _print_model(root, m, signed)
    _print_files_and_stages(m)
    verify = m.get("metrics", {}).get("verify")
    if verify:
        _print_verify(verify)
    tpu = m.get("metrics", {}).get("edgetpu")
    if tpu:
        _print_edgetpu(root, m, tpu)
    gate = m.get("gate")
    if gate:
        state = "passed" if gate["passed"] else ("FAILED (packaged with --no-gate)" if not gate["enforced"] else "FAILED")
        click.echo(f"gate       {state}" + "".join(f"\n  - {f}" for f in gate.get("failures", [])))


def _print_model(root: Path, m: dict, signed: str) -> None:
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


def _print_files_and_stages(m: dict) -> None:
    click.echo("files")
    for f in m["files"]:
        click.echo(f"  {f['path']:<20} {format_bytes(f['bytes']):>10}  sha256 {f['sha256'][:16]}...")
    prov = m.get("provenance", {})
    if prov:
        click.echo(f"teacher    {prov['teacher']['source']}")
        click.echo("stages")
        for s in prov.get("stages", []):
            click.echo(f"  {s['name']:<10} {format_seconds(s['seconds']):>10}")


def _print_verify(verify: dict) -> None:
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


def _print_edgetpu(root: Path, m: dict, tpu: dict) -> None:
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
    _print_verdict(tpu)
    _print_compiler(root, tpu.get("compiler", {}))
    click.echo("  per-op table: edgekit coral check " + str(root))
    _print_edgetpu_files(root, m)


def _print_verdict(tpu: dict) -> None:
    """The predicted verdict (recorded by the build; computed here for bundles that predate it)."""
    from edgekit.device.coral_latency import verdict_record

    v = tpu.get("verdict") or verdict_record(tpu)
    d = v["default"]
    click.echo(f"  verdict      {d['verdict']} (predicted)")
    click.echo(f"               {d['board']} + Edge TPU over {d['link']}: {d['tpu_tokens_per_second']:.3g} tokens/s, "
               f"{d['tpu_joules_per_token']:.3g} J/token; {d['board']} CPU: {d['cpu_tokens_per_second']:.3g} tokens/s, "
               f"{d['cpu_joules_per_token']:.3g} J/token (all predicted)")
    if d.get("unit") == "sentence":
        click.echo(f"               per {d['tokens_per_sentence']}-token sentence: Edge TPU "
                   f"{d['tpu_embeddings_per_second']:.3g} embeddings/s ({d['invokes_per_sentence']} invokes), CPU "
                   f"{d['cpu_embeddings_per_second']:.3g} embeddings/s (predicted)")
    click.echo("               other boards and links: edgekit coral check BUNDLE --board NAME --link usb2|usb3|pcie")


def _print_compiler(root: Path, comp: dict) -> None:
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


def _print_edgetpu_files(root: Path, m: dict) -> None:
    """What the Edge TPU delegate could take, from the files themselves (edgetpu-custom-op nodes)."""
    from edgekit.device.tflite_inspect import edgetpu_files

    found = edgetpu_files(root, m)
    if found is not None:
        with_op, total = found
        click.echo(f"  delegate     {with_op} of {total} file(s) the Edge TPU delegate opens hold an edgetpu-custom-op"
                   + ("" if with_op else ": it would take nothing (serve refuses unless --allow-cpu-fallback)"))


def print_speed(rec: dict, board) -> None:
    """Predicted tokens/s on a board (edgekit/device/speed.py), each with where its efficiency comes from."""
    click.echo(f"speed on {board.name} (PREDICTED, not measured): {board.description}")
    click.echo(f"  weights read per token  {rec['weight_bytes_per_token'] / 1e6:.3f} MB; board streaming copy "
               f"{rec['memory_bandwidth_bytes_per_second'] / 1e9:.3g} GB/s, int8 peak "
               f"{rec['int8_macs_per_second'] / 1e9:.4g} GMAC/s (boards/{board.name}.toml, with sources)")
    d, p = rec["decode"], rec["prefill"]
    roof = d.get("roofline_tokens_per_second")
    if d["tokens_per_second"] is not None:
        click.echo(f"  decode   predicted {d['tokens_per_second']:.4g} tokens/s = roofline {roof:.4g} x efficiency "
                   f"{d['efficiency']:g} ({d['efficiency_source']})")
        click.echo(f"           + fixed {d['fixed_seconds_per_token'] * 1e3:.3g} ms per token ({d['fixed_source']})")
    else:
        click.echo(f"  decode   not predicted: {d['reason']}" + (f" (roofline {roof:.4g} tokens/s, an upper bound)"
                                                                  if roof else ""))
    if p["tokens_per_second"] is not None:
        click.echo(f"  prefill  predicted {p['tokens_per_second']:.4g} tokens/s = efficiency {p['efficiency']:g} x "
                   f"int8 peak / {rec['macs_per_prompt_token']:,} MACs per prompt token ({p['efficiency_source']}); "
                   "compute only: per-call costs left out, so for a tiny model an upper bound")
    else:
        click.echo(f"  prefill  not predicted: {p['reason']}")
    refs = rec["reference_points"]
    click.echo(f"  published reference points on {board.name} (other engines and models, not edgekit)"
               + (":" if refs else ": none recorded (edgekit/device/speed_data.toml)"))
    for r in refs:
        figs = [f"{k} {r[k + '_tokens_per_second']:g}" for k in ("prefill", "decode") if k + "_tokens_per_second" in r]
        click.echo(f"    {r['engine']}, {r['model']}: {', '.join(figs)} tokens/s  {r['url']}")
