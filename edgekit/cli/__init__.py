"""The `edgekit` command line: the click group, `main`, and one module per command group.

    catalog.py  targets, recipes         serve.py   serve          power.py   power (+ --power options)
    build.py    build, distill           bench.py   bench          report.py  report
    inspect.py  inspect                  verify.py  verify         sign.py    keygen, sign (+ --trust)
    coral.py    coral check/compile/status  eval.py  eval           plots.py   matplotlib figures

The CLI sits on top of the three layers. May import: stdlib, click, edgekit.core and edgekit.device at
module level; edgekit.workshop (torch, transformers) and matplotlib only inside the functions that need
them, so a device install without torch runs every command but build/distill/eval of PyTorch models
(tests/test_layers.py checks both). User mistakes (EdgekitError) print one line `error: ...` and exit 1,
never a traceback.
"""

from __future__ import annotations

import sys

import click

from edgekit import __version__
from edgekit.core.errors import EdgekitError


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


# The command modules define their commands without naming this group (no import back into the package).
from edgekit.cli import bench, build, catalog, coral, power, report, serve, sign, verify  # noqa: E402
from edgekit.cli import eval as eval_commands, inspect as inspect_commands  # noqa: E402

for _command in (catalog.targets, catalog.recipes, build.build, build.distill, inspect_commands.inspect,
                 coral.coral, serve.serve, power.power, report.report, bench.bench, verify.verify, sign.keygen,
                 sign.sign, eval_commands.eval_cmd):
    cli.add_command(_command)
del _command


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
