"""The ``dsr-deploy`` command line (Typer).

Each area registers its commands from its own module (``register(app)``); heavy imports happen inside the
commands, so ``dsr-deploy --help`` and ``info`` work with only the core dependencies installed.
Errors the user can fix are raised as :class:`dsr_deploy.errors.UserError` and printed as one line.
"""

from __future__ import annotations

import sys
from typing import Optional

import typer

from .. import __version__
from ..errors import UserError
from . import bench_cmd, engine_cmd, export_cmd, info_cmd, serve_cmd

app = typer.Typer(
    name="dsr-deploy",
    help="Export, verify, benchmark and serve spiking neural networks trained with DSR.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _version(value: bool):
    if value:
        typer.echo(f"dsr-deploy {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Optional[bool] = typer.Option(
        None, "--version", callback=_version, is_eager=True, help="Print the version and exit."
    ),
):
    """dsr-deploy: deployment toolkit for DSR-trained spiking neural networks."""


# Each area adds its commands here; the order is the order of `--help`.
for _module in (info_cmd, export_cmd, bench_cmd, engine_cmd, serve_cmd):
    _module.register(app)


def main(argv: Optional[list[str]] = None) -> None:
    """Entry point: user errors become one red line on stderr and exit code 2; nothing else is swallowed."""
    try:
        app(args=argv, standalone_mode=False)
    except UserError as exc:
        typer.secho(f"error: {exc}", fg="red", err=True)
        sys.exit(exc.exit_code)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except typer.Abort:
        typer.secho("aborted", fg="red", err=True)
        sys.exit(130)
    except KeyboardInterrupt:
        typer.secho("interrupted", fg="red", err=True)
        sys.exit(130)
    except Exception as exc:  # click usage errors and the like
        import click

        if isinstance(exc, click.exceptions.ClickException):
            exc.show()
            sys.exit(exc.exit_code)
        raise
