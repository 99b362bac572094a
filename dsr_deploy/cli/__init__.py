"""The ``dsr-deploy`` command line (Typer).

Each area registers its commands from its own module ``cli/<area>_cmd.py`` (``register(app)``, found by
name); heavy imports happen inside the commands, so ``dsr-deploy --help`` and ``info`` work with only the core
dependencies installed.
Errors the user can fix are raised as :class:`dsr_deploy.errors.UserError` and printed as one line.
"""

from __future__ import annotations

import sys
from typing import Optional

import typer

from .. import __version__
from ..errors import UserError

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


def _register_areas() -> None:
    # Every module named *_cmd in this package registers its commands; ORDER (default 100) sets their place
    # in `--help`. Discovery keeps areas independent: adding one touches no shared file.
    import importlib
    import pkgutil

    modules = [
        importlib.import_module(f"{__name__}.{info.name}")
        for info in pkgutil.iter_modules(__path__)
        if info.name.endswith("_cmd")
    ]
    for module in sorted(modules, key=lambda m: (getattr(m, "ORDER", 100), m.__name__)):
        module.register(app)


_register_areas()


def _interrupted(exc: Optional[BaseException]) -> None:
    """Ctrl-C (exit 130) or SIGTERM / SIGHUP (exit 128 + signal), after the cleanup unwinding did."""
    from ..guard import terminated_by

    signum = terminated_by()
    if signum is not None:  # whatever a library turned the interruption into on its way up
        import signal

        typer.secho(f"terminated ({signal.Signals(signum).name})", fg="red", err=True)
        sys.exit(128 + signum)
    while exc is not None and not isinstance(exc, KeyboardInterrupt):
        exc = exc.__cause__ or exc.__context__  # click wraps Ctrl-C in Abort
    typer.secho("interrupted" if exc is not None else "aborted", fg="red", err=True)
    sys.exit(130)


def _quiet_library_warnings():
    """Library remarks that are not the user's business: TorchScript is one of our formats, so torch's
    ``torch.jit.save`` / ``load`` / ``script`` / ``trace`` deprecation notes (shown under ``-W default`` or
    ``PYTHONWARNINGS``) are noise in every command that writes or reads a ``model.ts``. Returns a function
    that restores the previous filters."""
    import warnings

    scope = warnings.catch_warnings()
    scope.__enter__()
    warnings.filterwarnings("ignore", message=r"`torch\.jit\.\w+` is (deprecated|not supported)",
                            category=DeprecationWarning)
    return lambda: scope.__exit__(None, None, None)


def _outside_code_exit(exc: BaseException) -> None:
    """A SystemExit (or another non-Exception) raised by code outside dsr-deploy and its CLI libraries, the
    user's model code run anywhere (a factory, a forward in bench's neuron count, ...): one line naming where,
    exit 2, instead of ending the command with the user code's exit status."""
    import os

    from ..errors import first_line

    tb, last = exc.__traceback__, None
    while tb is not None:
        last, tb = tb, tb.tb_next
    if last is None:
        return
    where = os.path.abspath(last.tb_frame.f_code.co_filename)
    ours = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    libs = [os.path.dirname(os.path.abspath(m.__file__)) for m in (typer, sys.modules.get("click"))
            if m is not None and getattr(m, "__file__", None)]
    if any(where.startswith(d + os.sep) for d in [ours, *libs]):
        return
    typer.secho(f"error: model code raised {first_line(exc, with_type=True)} at {where}:{last.tb_lineno} "
                f"({last.tb_frame.f_code.co_name})", fg="red", err=True)
    sys.exit(2)


_command: dict = {}


def command():
    """The click command of ``app``, built once, every numeric option checked and every ``--json`` flag keeping
    stdout for the JSON document (:mod:`.validate`)."""
    if _command.get("app") is not app:  # rebuilt when ``app`` was replaced (a test's own Typer app)
        from .validate import harden, json_flags

        cmd = typer.main.get_command(app)
        harden(cmd)
        json_flags(cmd)
        _command.update(app=app, cmd=cmd)
    return _command["cmd"]


def _broken_pipe() -> None:
    """The reader of stdout went away (``| head``): not an error of the command's; end quietly, as a process
    killed by SIGPIPE would (exit 141), without Python's complaint when it flushes stdout at exit."""
    import os

    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):  # stdout is no real file (a test's capture)
        pass
    sys.exit(141)


def _from_broken_pipe(exc: BaseException) -> bool:
    seen = 0
    while exc is not None and seen < 20:
        if isinstance(exc, BrokenPipeError):
            return True
        exc, seen = exc.__cause__ or exc.__context__, seen + 1
    return False


def main(argv: Optional[list[str]] = None) -> None:
    """Entry point: user errors become one red line on stderr and exit code 2; nothing else is swallowed.

    SIGTERM and SIGHUP unwind like Ctrl-C (see :mod:`dsr_deploy.guard`), so every command cleans up the same way;
    once one arrived, the command ends with it (exit 128 + signal) whatever error the unwinding produced (a
    library may wrap the interruption in its own exception).
    """
    from ..guard import install_signal_handlers, terminated_by

    restore_signals = install_signal_handlers()
    restore_warnings = _quiet_library_warnings()
    try:
        # Outside standalone mode click returns the code of a `typer.Exit(n)` instead of exiting: pass it on.
        rc = command()(args=argv, standalone_mode=False)
        if terminated_by() is not None:
            _interrupted(None)
        if isinstance(rc, int) and rc != 0:
            sys.exit(rc)
    except SystemExit as exc:
        if terminated_by() is not None:
            _interrupted(None)
        if _from_broken_pipe(exc):  # rich turns a closed stdout into SystemExit(1)
            _broken_pipe()
        _outside_code_exit(exc)
        raise
    except UserError as exc:
        if terminated_by() is not None:
            _interrupted(exc)
        typer.secho(f"error: {exc}", fg="red", err=True)
        sys.exit(exc.exit_code)
    except typer.Exit as exc:
        if terminated_by() is not None:
            _interrupted(exc)
        sys.exit(exc.exit_code)
    except (typer.Abort, KeyboardInterrupt) as exc:
        _interrupted(exc)
    except BrokenPipeError:
        _broken_pipe()
    except Exception as exc:
        if terminated_by() is not None:
            _interrupted(exc)
        # Click usage errors (Typer may vendor its own click, so match by behaviour, not by class).
        if callable(getattr(exc, "show", None)) and isinstance(getattr(exc, "exit_code", None), int):
            if getattr(exc, "param", None) is not None and callable(getattr(exc, "format_message", None)):
                # A bad option value (``--iters 1.5``): one line, like every other refusal.
                typer.secho(f"error: {' '.join(exc.format_message().split())}", fg="red", err=True)
                sys.exit(2)
            exc.show()
            sys.exit(exc.exit_code)
        raise
    except BaseException as exc:  # GeneratorExit or a user's own BaseException subclass
        _outside_code_exit(exc)
        raise
    finally:
        from .validate import end_json_mode

        end_json_mode()
        restore_signals()
        restore_warnings()
