"""`edgekit coral ...`: Edge TPU tools (op-mapping prediction). Imports no torch.

May import: stdlib, click, edgekit.core, edgekit.device.
"""

from __future__ import annotations

import json
from pathlib import Path

import click

from edgekit.core.errors import ConfigError


@click.group()
def coral():
    """Coral Edge TPU tools."""


def _model_paths(path: Path) -> list[Path]:
    """The .tflite file itself, or every model file of a bundle folder (segments included)."""
    if path.is_dir():
        found = sorted(p for p in path.glob("*.tflite") if not p.name.endswith("_edgetpu.tflite"))
        if not found:
            raise ConfigError(f"no .tflite model in {path}")
        return found
    if not path.is_file():
        raise ConfigError(f"no .tflite model at {path}")
    return [path]


@coral.command()
@click.argument("model", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output (every op, statuses, totals).")
@click.option("--subgraph", default=None, help="Only this subgraph (signature), e.g. decode.")
@click.option("--board", default=None, metavar="NAME",
              help="Also predict tokens/s and J/token on this board's CPU vs an Edge TPU on it (e.g. rpi5).")
@click.option("--link", default="usb3", show_default=True, metavar="NAME",
              help="How the Edge TPU is attached, with --board: usb2, usb3 or pcie (accelerators/edgetpu.toml).")
def check(model, as_json, subgraph, board, link):
    """Predict which ops of MODEL (a .tflite file, or every model file of a bundle folder) the Edge
    TPU compiler maps.

    \b
    Each op gets the compiler's own status words and a plain-language reason, from Coral's
    published rules (edgekit/device/coral_rules.py): 8-bit tensors only, static shapes, at most 3
    non-unit innermost dimensions, listed ops with their limits, and one TPU segment (everything
    after the first unmapped op runs on the CPU). Totals: ops mapped, share of multiply-accumulates
    on the TPU, parameter bytes vs the ~8 MB on-chip cache. A prediction: the compiler decides.
    """
    from edgekit.device.coral_check import predict, report

    target = _board_and_link(board, link) if board else None  # bad names fail before any model is read
    results = []
    for path in _model_paths(model):
        try:
            preds = predict(path)
        except Exception as exc:  # a non-flatbuffer file makes the schema reader fail in various ways
            raise ConfigError(f"{path}: not a readable .tflite model ({type(exc).__name__}: {exc})") from None
        if subgraph is not None:
            names = [p.name for p in preds]
            preds = [p for p in preds if p.name == subgraph]
            if not preds:
                raise ConfigError(f"{path} has no subgraph '{subgraph}'; it has: {', '.join(names)}")
        results.append((path, preds))
    verdict = _verdict(results, *target) if target else None
    if as_json and verdict is not None:
        click.echo(json.dumps(verdict, indent=2))
        return
    from edgekit.device.coral_latency import verdict_lines as lines

    if verdict is not None and verdict.get("unit") == "sentence":
        from edgekit.device.coral_sentence import verdict_lines as lines
    if as_json:
        click.echo(json.dumps([{"model": str(p), "subgraphs": [x.to_dict() for x in preds]} for p, preds in results]
                              if len(results) > 1 else
                              {"model": str(results[0][0]), "subgraphs": [x.to_dict() for x in results[0][1]]},
                              indent=2))
    else:
        click.echo("\n".join(f"== {p.name}\n{report(preds)}" for p, preds in results))
    if verdict is not None:
        click.echo(lines(verdict))


def _board_and_link(board: str, link: str) -> tuple:
    from edgekit.core.accelerators import load_accelerator
    from edgekit.core.boards import load_board

    acc = load_accelerator("edgetpu")
    return load_board(board), acc.link(link), acc


def _verdict(results: list, the_board, the_link, acc) -> dict:
    """Predicted time and energy per token on the board's CPU and with an Edge TPU over `the_link`."""
    from edgekit.device.coral_latency import predict

    segments = [{"file": p.name, "parameter_bytes": sum(x.totals()["parameter_bytes_on_tpu"] for x in preds),
                 "macs": sum(x.totals()["macs_on_tpu"] for x in preds)} for p, preds in results]
    signature = _bundle_signature(results)
    if signature.get("segment_form") == "sentence":  # encoder segments taking `rows` tokens per call
        from edgekit.device import coral_sentence

        rows = coral_sentence.sentence_segments({"prediction": [
            {"file": s["file"], "subgraph": s["file"], "totals": {"parameter_bytes_on_tpu": s["parameter_bytes"],
                                                                  "macs_on_tpu": s["macs"]}} for s in segments]}, signature)
        return coral_sentence.predict(rows, signature, the_board, the_link, acc)
    return predict(_in_compiler_order(segments, results), the_board, the_link, acc, _host_weight_bytes(results))


def _host_weight_bytes(results: list) -> int:
    """int8 weights a segmented bundle's host reads per token outside its segments (a host LM head)."""
    manifest = results[0][0].parent / "manifest.json"
    if not manifest.is_file():
        return 0
    from edgekit.device.segmented_model import host_weight_bytes

    sig = json.loads(manifest.read_text()).get("signature", {})
    return host_weight_bytes(sig) if sig.get("layout") == "tpu-segments" else 0


def _bundle_signature(results: list) -> dict:
    manifest = results[0][0].parent / "manifest.json"
    return json.loads(manifest.read_text()).get("signature", {}) if len(results) > 1 and manifest.is_file() else {}


def _in_compiler_order(segments: list[dict], results: list) -> list[dict]:
    """Segments in the bundle's execution order (the co-compile order) when the folder is a bundle."""
    folder = results[0][0].parent
    manifest = folder / "manifest.json"
    if len(results) < 2 or not manifest.is_file():
        return segments
    order = [seg["file"] for seg in json.loads(manifest.read_text()).get("signature", {}).get("segments", [])]
    return sorted(segments, key=lambda s: (order.index(s["file"]) if s["file"] in order else len(order), s["file"]))


@coral.command("compile")
@click.argument("bundle", type=click.Path(path_type=Path))
@click.option("--compiler", default=None, metavar="PATH", help="edgetpu_compiler to run (default: found on PATH).")
@click.option("--out", "-o", type=click.Path(path_type=Path), default=None,
              help="Write the compiled bundle here (default: replace BUNDLE atomically).")
def compile_(bundle, compiler, out):
    """Compile a coral bundle's model for the Edge TPU and add it to the bundle.

    Runs `edgetpu_compiler -s` on the bundle's full-int8 model, keeps the CPU model beside the
    compiled one (the server falls back to it when no Edge TPU is attached), and records the
    compiler's per-op table next to edgekit's prediction, disagreements included.
    """
    import shutil
    import tempfile

    from edgekit.workshop.coral_compile import find_compiler, run_compile_stage
    from edgekit.core.bundle import SIGNATURE, load_bundle, staging_dir, write_bundle
    from edgekit.core.errors import BuildError

    if Path(bundle).is_file() and out is None:
        raise ConfigError(f"{bundle}: a .tar bundle is opened from edgekit's extraction cache; pass --out DIR "
                          "for the compiled bundle")
    b = load_bundle(bundle)
    m = b.manifest
    if m["model"]["format"] != "tflite" or m["model"].get("precision") != "int8-full":
        raise ConfigError(f"{b.root}: only full-int8 TFLite bundles (target coral) can be compiled for the Edge TPU")
    if find_compiler(compiler) is None:
        raise BuildError("edgetpu_compiler not found on PATH; install Coral's edgetpu-compiler package "
                         "(x86-64 Linux) or pass --compiler PATH")
    out = out or b.root
    from edgekit.workshop.coral_compile import compiler_order

    models = compiler_order([b.path(f["path"]) for f in m["files"]
                             if f["path"].endswith(".tflite") and not f["path"].endswith("_edgetpu.tflite")],
                            m.get("signature"))
    host, host_bytes = _host_work(m)
    with tempfile.TemporaryDirectory() as tmp:
        record = run_compile_stage(models, Path(tmp), compiler, log=lambda s: click.echo(s, err=True),
                                   host_macs_per_token=host, signature=m.get("signature"),
                                   host_weight_bytes=host_bytes)
        comp = record["compiler"]
        if not comp.get("compiled"):
            logs = (Path(tmp) / "edgetpu_compiler.log").read_text()[-1500:]
            raise BuildError(f"edgetpu_compiler failed on {', '.join(comp.get('failed', []))}; log:\n{logs}")
        staging = staging_dir(out)
        for f in m["files"]:
            if f["path"] not in comp["files"]:
                shutil.copyfile(b.path(f["path"]), staging / f["path"])
        for name in comp["files"]:
            shutil.copyfile(Path(tmp) / name, staging / name)
    manifest = {k: v for k, v in m.items() if k != "files"}
    manifest["model"] = dict(m["model"], accelerated_files=comp["files"])
    manifest["metrics"] = dict(m.get("metrics", {}), edgetpu=record)
    was_signed = (b.root / SIGNATURE).is_file()
    write_bundle(staging, manifest, out)
    click.echo(f"compiled: {comp['ops_on_tpu']} ops on the Edge TPU, {comp['ops_on_cpu']} on the CPU; "
               f"{len(comp['disagreements'])} disagreements with the prediction -> {out}")
    if was_signed:
        click.echo(f"note: the compiled bundle has a new manifest, so its signature was dropped; sign it again: "
                   f"edgekit sign {out} --key KEY", err=True)


def _host_work(m: dict) -> tuple[int | None, int]:
    """(MACs, int8 weight bytes) per token a segmented bundle's host does outside its TPU files."""
    if m["model"]["runtime"] != "litert-segments":
        return None, 0
    from edgekit.device.segmented_model import encoder_host_macs, host_macs, host_weight_bytes

    if m.get("task") == "feature-extraction":
        return encoder_host_macs(m["signature"]), 0
    return host_macs(m["signature"]), host_weight_bytes(m["signature"])


@coral.command("status")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option("--library", default="libedgetpu.so.1", show_default=True, metavar="NAME|PATH",
              help="The Edge TPU runtime library to look for and load (what `serve --delegate-library` would use).")
@click.option("--root", default="/", show_default=True, hidden=True,
              help="Read sysfs, /dev and the libraries under this folder instead of / (tests, chroots).")
def status_(as_json, library, root):
    """Is an Edge TPU attached (USB or PCIe/M.2), and is a runtime present that LiteRT can load?

    \b
    Looks at USB (1a6e:089a before the runtime's first use, 18d1:9302 after) and PCIe (/dev/apex_*),
    then loads libedgetpu.so.1 and reads which TensorFlow release its Debian package was built
    against; every answer says why. Install notes: docs/coral.md#runtime-on-raspberry-pi-os.
    """
    from edgekit.device.coral_runtime import status

    found = status(root, library)
    click.echo(json.dumps(found.as_dict(), indent=2) if as_json else found.lines())
