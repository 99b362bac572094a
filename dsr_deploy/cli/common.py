"""What the commands share: consoles, the assumed-settings warning, --set (the tables and number formats are
:mod:`.render`'s, re-exported here)."""

from __future__ import annotations

from .render import console, err_console, fmt_coef, fmt_float, neuron_table, pct, spec_note  # noqa: F401 (re-exported)


def warn_assumed(loaded) -> None:
    """The one-line warning on stderr naming the settings a checkpoint did not store and no --set gave."""
    import sys

    for line in [loaded.warning(), *getattr(loaded, "notes", [])]:
        if line:
            print(f"warning: {line}", file=sys.stderr)


SET_HELP = ("KEY=VALUE for the model's factory / constructor (repeatable; e.g. --set T=5 --set num_classes=100 "
            "--set v_threshold=0.6), checked against its signature and recorded in the manifest")


