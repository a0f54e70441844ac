"""`edgekit verify BUNDLE`: re-run the bundle's reference data on this machine's kernels. Imports no torch.

Exit status: 0 every gated check passed, 1 a check failed (or the bundle failed its sha256 checks),
3 the bundle carries no reference data. May import: stdlib, click, edgekit.core, edgekit.device.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from edgekit.cli.sign import trust_check, trust_option

EXIT_FAILED = 1
EXIT_NO_REFERENCE = 3


def header(loaded) -> str:
    m = loaded.bundle.manifest
    return (f"edgekit verify: {m['name']} ({m['target']['name']}, {m['model']['precision']}, "
            f"{m['model']['runtime']} on {loaded.accelerator})")


def delegation_lines(loaded) -> list[str]:
    """The delegate's line (and the CPU fallback warning) for a GPU / Edge TPU bundle; else none."""
    d = loaded.delegation
    if d is None or not d.hardware:
        return []
    return [f"  {loaded.fallback_warning or d.line()}"]


def exit_code(result: dict) -> int:
    if result["passed"] is None:
        return EXIT_NO_REFERENCE
    return 0 if result["passed"] else EXIT_FAILED


@click.command("verify")
@click.argument("bundle", type=click.Path(path_type=Path))
@click.option("--threads", default=0, show_default=True, type=click.IntRange(0, 256),
              help="Runtime threads (0 = the target's runtime.threads, capped at the CPUs this process may use).")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON (same exit status).")
@click.option("--allow-cpu-fallback", is_flag=True,
              help="Check on the CPU when the target's GPU / Edge TPU delegate is missing or takes no nodes "
                   "(otherwise that is an error, exit 1).")
@trust_option
def verify(bundle, threads, as_json, allow_cpu_fallback, trust):
    """Check a bundle on this machine's kernels against the PyTorch reference stored at build time.

    \b
    Re-runs the verify prompts and held-out windows stored in the bundle (reference.npz) and prints
    each check against the target's [verify] limits with the device's figure, PyTorch's and the
    workstation export's. Exit status: 0 pass, 1 fail, 3 no reference data in the bundle.
    """
    from edgekit.core.bundle import load_bundle
    from edgekit.device.delegation import DelegateUnusable
    from edgekit.device.reference import bundle_reference
    from edgekit.device.reference_check import NO_REFERENCE, check_model, summary_lines
    from edgekit.device.runtime import open_model

    b = load_bundle(bundle, check=trust_check(trust))  # signature (--trust), sha256 of every file
    ref = bundle_reference(b)
    if ref is None:
        result = {"passed": None, "reason": NO_REFERENCE, "checks": []}
        click.echo(json.dumps(result, indent=2) if as_json else f"edgekit verify: {b.manifest['name']}: {NO_REFERENCE}")
        sys.exit(EXIT_NO_REFERENCE)
    try:
        loaded = open_model(b, threads=threads, allow_cpu_fallback=allow_cpu_fallback)
    except DelegateUnusable as exc:
        raise click.ClickException(str(exc)) from None
    result = check_model(loaded.model, loaded.tokenizer, ref, b.manifest["target"].get("verify", {}))
    if loaded.delegation is not None:
        result["delegation"] = loaded.delegation.as_dict()
    if as_json:
        click.echo(json.dumps(result, indent=2))
    else:
        click.echo("\n".join(summary_lines(result, header(loaded)) + delegation_lines(loaded)))
    sys.exit(exit_code(result))


def verify_before_serving(loaded, echo) -> int:
    """`serve --verify`: check `loaded` on this machine, print the lines through `echo`, keep the
    result for /props (`device_verify`); returns the exit status (0 = serve it)."""
    from edgekit.device.reference_check import check_bundle, summary_lines

    result = check_bundle(loaded)
    loaded.device_verify = result
    for line in summary_lines(result, header(loaded)):
        echo(line)
    return exit_code(result)
