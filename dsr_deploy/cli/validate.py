"""Every numeric option of every command, checked at parse time by one validator.

:func:`harden` walks the click command tree once and wraps the conversion of each ``int`` / ``float``
parameter: NaN and infinities are refused for every one, and the range comes from :data:`RANGES`, keyed by
option name (one table, so a new numeric option without a range is caught by
``tests/test_hardening2.py::test_every_numeric_option_has_a_range``). A refusal is a
:class:`~dsr_deploy.errors.UserError`: one line, exit 2, before any work.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Dict, Optional

from ..errors import UserError


@dataclass(frozen=True)
class Range:
    """``lo <= v <= hi`` (``lo_open``: ``lo < v``); None: unbounded on that side."""

    lo: Optional[float] = None
    hi: Optional[float] = None
    lo_open: bool = False
    why: str = ""

    def describe(self) -> str:
        parts = []
        if self.lo is not None:
            parts.append(f"{'>' if self.lo_open else '>='} {self.lo:g}")
        if self.hi is not None:
            parts.append(f"<= {self.hi:g}")
        return " and ".join(parts) or "finite"

    def holds(self, v: float) -> bool:
        if self.lo is not None and (v <= self.lo if self.lo_open else v < self.lo):
            return False
        return self.hi is None or v <= self.hi


COUNT = Range(0)  # a count that may be zero (warm-up runs, 0 = the default / off)
POSITIVE = Range(1)  # a count that must be at least one
PORT = Range(0, 65535)

#: option name -> its range (the same name means the same thing in every command).
RANGES: Dict[str, Range] = {
    "--warmup": COUNT,
    "--iters": POSITIVE,
    "--seconds": Range(0, 24 * 3600, lo_open=True),
    "--threads": COUNT,
    "--neurons": POSITIVE,
    "--workspace": POSITIVE,
    "--opset": Range(1, 1000),  # the writer checks the supported span with its own message
    "--jobs": POSITIVE,
    "--port": PORT,
    "--grpc-port": PORT,
    "--max-batch": Range(0, 1 << 20),
    "--queue-delay-us": Range(0, 60_000_000),
    "--idle-timeout": Range(0, 365 * 24 * 3600, lo_open=True),
    "--max-sequences": POSITIVE,
    "--max-request-mb": Range(0, 1 << 20, lo_open=True),
    "--min-top1": Range(0, 1),
    "--max-accuracy-drop": Range(0, 1),
    "--min-agreement": Range(0, 1),
    "--samples": COUNT,  # verify: generated samples (0: only --input)
    "--seed": Range(0, 2**32 - 1),
    "--max-drop": Range(0, 100),  # percentage points of accuracy (exit-calibrate)
    "--k8s-replicas": Range(1, 10_000),
}


def _option_name(param) -> str:
    longs = [o for o in getattr(param, "opts", []) if o.startswith("--")]
    return longs[0] if longs else (getattr(param, "name", None) or "?")


def _annotations(command: Any) -> Dict[str, Any]:
    """The command function's type hints by parameter name (Typer keeps the function behind ``callback``)."""
    import inspect
    import typing

    fn = getattr(command, "callback", None)
    fn = inspect.unwrap(fn) if fn is not None else None
    if fn is None:
        return {}
    try:
        return typing.get_type_hints(fn)
    except Exception:  # noqa: BLE001 - an unresolvable hint: no numeric options found there
        return {}


def numeric_kind(hint: Any) -> Optional[type]:
    """``int`` or ``float`` for a parameter annotated ``int`` / ``float`` / ``Optional[...]`` of one, else None."""
    import typing

    args = [a for a in typing.get_args(hint) if a is not type(None)] if typing.get_origin(hint) is typing.Union \
        else [hint]
    if len(args) == 1 and args[0] in (int, float):
        return args[0]
    return None


def check_number(v: Any, label: str, rng: Range) -> Any:
    """``v`` when finite and inside ``rng`` (None passes: the option was not given); a UserError else."""
    if v is None or isinstance(v, bool):
        return v
    if isinstance(v, float) and not math.isfinite(v):
        raise UserError(f"{label} must be a finite number, got {v}")
    if not rng.holds(v):
        raise UserError(f"{label} must be {rng.describe()}, got {v:g}" + (f" ({rng.why})" if rng.why else ""))
    return v


def _checked(previous: Optional[Callable], label: str, rng: Range) -> Callable:
    def callback(ctx, param, value):
        check_number(value, label, rng)
        return previous(ctx, param, value) if previous is not None else value
    callback._dsr_checked = True
    return callback


def numeric_params(command: Any, path: str = ""):
    """``(command path, parameter, kind)`` for every numeric parameter under ``command``."""
    name = getattr(command, "name", None)
    here = f"{path} {name}".strip() if name else path
    hints = _annotations(command)
    for p in getattr(command, "params", []):
        kind = numeric_kind(hints.get(p.name))
        if kind is not None:
            yield here, p, kind
    for sub in getattr(command, "commands", {}).values():
        yield from numeric_params(sub, here)


def harden(command: Any) -> Any:
    """Give every numeric parameter the checking callback (idempotent): finite, and in its range. The value it
    sees is already converted (a float ``nan`` / ``inf`` included), so this holds for any click / Typer."""
    for _, p, _kind in numeric_params(command):
        if getattr(p.callback, "_dsr_checked", False):
            continue
        label = _option_name(p)
        p.callback = _checked(p.callback, label, RANGES.get(label, Range()))
    return command


# ---------------------------------------------------------------------------------------------------------
# --json: stdout carries the JSON document only.

_json_state: dict = {"real": None}


def _json_flag(previous):
    def callback(ctx, param, value):
        if value and _json_state["real"] is None:
            import sys

            # Everything printed while the command runs (a model factory's print(), a library's remark) goes to
            # stderr; emit_json writes the document to the real stdout.
            _json_state["real"] = sys.stdout
            sys.stdout = sys.stderr
        return previous(ctx, param, value) if previous is not None else value
    return callback


def json_flags(command: Any) -> None:
    """Give every boolean ``--json`` flag the callback that sends other stdout output to stderr."""
    for p in command.params:
        if "--json" in getattr(p, "opts", []) and getattr(p, "is_flag", False) and not getattr(p, "_dsr_json", 0):
            p.callback = _json_flag(p.callback)
            p._dsr_json = True
    for sub in getattr(command, "commands", {}).values():
        json_flags(sub)


def end_json_mode() -> None:
    import sys

    real = _json_state["real"]
    if real is not None:
        sys.stdout = real
        _json_state["real"] = None


def emit_json(text: str) -> None:
    """Print a command's JSON document: to the real stdout while ``--json`` holds other output on stderr."""
    import sys

    out = _json_state["real"] or sys.stdout
    out.write(text + "\n")
    out.flush()
