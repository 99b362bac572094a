"""``dsr-deploy serve`` with early exit: a streaming export whose manifest holds ``exit-calibrate``'s rule gets three
more outputs per step, ``steps`` (the sequence's steps so far), ``exit`` (the rule fired: the server has ended the
sequence and released its membranes) and ``readout`` (the running readout), computed as a local run computes them
(:mod:`dsr_deploy.early_exit`)."""

from __future__ import annotations

from typing import Dict, List, Mapping

import numpy as np

from ..early_exit import ExitRule, ExitTracker, Readout
from ..manifest import as_manifest

STEPS, EXIT, READOUT = "steps", "exit", "readout"


class ServerExit:
    """The output spikes of every open sequence, and the rule that ends it."""

    def __init__(self, rule: ExitRule, readout: Readout, T: int):
        self.rule, self.readout, self.T = rule, readout, int(T)
        self.history: Dict[int, List[np.ndarray]] = {}

    @classmethod
    def from_manifest(cls, manifest: Mapping) -> ServerExit:
        from ..manifest import parse_manifest
        from ..runtime.early_exit import manifest_readout

        parse_manifest(dict(manifest), getattr(manifest, "source", None))  # the record, now that its schema is known
        T = int(as_manifest(manifest).T or as_manifest(manifest).input_shape[0])
        return cls(ExitRule.from_record(manifest["early_exit"]), manifest_readout(manifest), T)

    def outputs(self, classes: int) -> list:
        return [(STEPS, np.int64, (1,)), (EXIT, np.bool_, (1,)), (READOUT, np.float32, (classes,))]

    def step(self, sid: int, start: bool, y: np.ndarray) -> tuple:
        """After one step of sequence ``sid``: (steps so far, whether the rule fires now, running readout)."""
        hist = [] if start else self.history.get(sid, [])
        hist = hist + [np.asarray(y, np.float32).reshape(1, -1)]
        self.history[sid] = hist
        readouts = self.readout.prefixes(np.stack(hist))
        tracker = ExitTracker(self.rule, 1, self.T)  # replayed over the steps so far (the stable rule's run)
        fired = [bool(tracker.done(r, j + 1)[0]) for j, r in enumerate(readouts)]
        return len(hist), fired[-1], readouts[-1, 0]

    def keep_only(self, live) -> None:
        """Forget the sequences the store no longer holds (ended, exited, idle)."""
        for sid in [s for s in self.history if s not in live]:
            del self.history[sid]
