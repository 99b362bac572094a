"""Interruptions and user code, the same for every command.

* **Signals**: :func:`install_signal_handlers` (called once by the CLI entry) makes SIGTERM and SIGHUP raise
  :class:`Terminated` in the main thread, a :class:`KeyboardInterrupt`, so every ``finally`` / ``except
  BaseException`` that cleans up after Ctrl-C (temporary folders next to ``--out``, probe folders in the system
  temp directory) runs for them too; the process then exits ``128 + signal`` (also when a library wrapped the
  interruption in an exception of its own). A signal ignored when the process started (``nohup``) stays ignored.
* **User code** (a model factory, a model file's top level, a model's forward): :func:`user_code` turns any
  exception or exit it raises (``SystemExit(0)`` included; Ctrl-C and SIGTERM aside) into a one-line
  :class:`~dsr_deploy.errors.UserError` naming it, exit code 2.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from typing import Callable, Iterator, Optional

from .errors import UserError, first_line

HANDLED_SIGNALS = tuple(getattr(signal, n) for n in ("SIGTERM", "SIGHUP") if hasattr(signal, n))


class Terminated(KeyboardInterrupt):
    """SIGTERM / SIGHUP arrived: unwind (cleaning up as for Ctrl-C) and exit ``128 + signum``."""

    def __init__(self, signum: int):
        self.signum = int(signum)
        super().__init__(signal.Signals(self.signum).name)

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


_state: dict = {"signum": None}


def _on_signal(signum, frame):
    # Raised again for a repeated signal: a library that swallowed the first one must not keep the process.
    _state["signum"] = signum
    raise Terminated(signum)


def terminated_by() -> Optional[int]:
    """The SIGTERM / SIGHUP received since :func:`install_signal_handlers`, or None. The CLI exits with it even
    when a library wrapped the :class:`Terminated` it raised in an exception of its own (torch.export does)."""
    return _state["signum"]


def install_signal_handlers() -> Callable[[], None]:
    """SIGTERM and SIGHUP raise :class:`Terminated` (main thread only; elsewhere nothing changes). Returns a
    function that puts the previous handlers back (the CLI run in-process, by tests, leaves no trace)."""
    previous = {}
    if threading.current_thread() is threading.main_thread():
        _state["signum"] = None
        for sig in HANDLED_SIGNALS:
            if signal.getsignal(sig) is not signal.SIG_IGN:
                previous[sig] = signal.signal(sig, _on_signal)

    def restore() -> None:
        for sig, handler in previous.items():
            signal.signal(sig, handler)

    return restore


@contextlib.contextmanager
def user_code(message: Callable[[str], str]) -> Iterator[None]:
    """Run user code; anything it raises or exits with becomes ``UserError(message(first_line(exc)))``.

    A :class:`UserError` passes unchanged; Ctrl-C / :class:`Terminated` (KeyboardInterrupt) and GeneratorExit
    are not the user code's to swallow.
    """
    try:
        yield
    except (UserError, KeyboardInterrupt, GeneratorExit):
        raise
    except BaseException as exc:  # noqa: BLE001 - SystemExit(0) from a factory must not end the command
        raise UserError(message(first_line(exc, with_type=True))) from exc
