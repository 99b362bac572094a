"""Streaming folders (``export --mode streaming``): the step artifact run over T steps, its membranes carried as a
stream carries them, against the multi-step reference.

* **End to end**: from the manifest's initial membranes (zeros; a hard-reset SpikingJelly layer's v_reset), each
  step's ``x_t`` fed and each ``v_out_i`` fed back as ``v_in_i``; the
  stacked ``y_t`` against the multi-step network's output (max |diff|, top-1 of the rate over T).
* **Teacher-forced** (ONNX step files, :func:`forced_step_model`): every step node fed the reference's input
  current at that step and downstream fed the reference's spikes, its membrane carried *through the file's own
  state I/O*: each node's spikes must equal the reference's at every step (so a tampered state path fails
  naming the layer), and each layer's input is checked as in :mod:`.layers`. A TorchScript step file runs
  PyTorch's kernels and the scripted reference step: its stepped output must equal the reference bit for bit.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Dict, List

import numpy as np

from ..contract import SJ_STEP_OP_TYPES, STEP_OP_TYPES, STREAM_INPUT, STREAM_OUTPUT, state_input_name, state_output_name
from .context import VerifyContext, build_context
from .layers import FLOAT_TOLERANCE, LayerFigures, compare
from .plan import Target, artifact_targets
from .report import LayerStat, Run


def _stream(runner, states: list, x: np.ndarray, extra=None, collect=None) -> np.ndarray:
    """Step ``x`` [T, B, ...] through ``runner`` from the manifest's initial states; ``extra(t)``: more feeds per
    step, ``collect(t, feeds, out)``: sees every step's feeds and outputs."""
    from ..runtime.stream import initial_value

    B = x.shape[1]
    v = {s["input"]: np.full((B, *s["shape"]), initial_value(s), np.float32) for s in states}
    ys = []
    for t in range(x.shape[0]):
        feeds = {STREAM_INPUT: np.ascontiguousarray(x[t]), **v, **(extra(t) if extra else {})}
        out = runner.infer(feeds)
        ys.append(np.asarray(out[STREAM_OUTPUT], dtype=np.float32))
        v = {s["input"]: np.asarray(out[s["output"]], np.float32) for s in states}
        if collect:
            collect(t, feeds, out)
    return np.stack(ys)


def _node_for_state(nodes, i: int, graph_outputs: Dict[str, str]):
    """The step node whose new membrane leaves as ``v_out_i`` (through Identity nodes), else the i-th node."""
    for n in nodes:
        if len(n.output) > 1 and graph_outputs.get(n.output[1]) == state_output_name(i):
            return n
    return nodes[i] if i < len(nodes) else None


def forced_step_model(model, n_states: int, ranks: List[int]):
    """A copy of the ONNX step ``model``: node i's input current is graph input ``verify_x_i``, its spikes leave as
    ``verify_own_i``, what reads its spikes reads graph input ``<spikes>`` (the reference's), and the tensor it
    integrated before (the file's own current) leaves as ``verify_cur_i``."""
    import onnx
    from onnx import helper

    from ..onnx_graph import dsr_nodes

    m = onnx.ModelProto()
    m.CopyFrom(model)
    nodes = dsr_nodes(m, (*STEP_OP_TYPES.values(), *SJ_STEP_OP_TYPES.values()), subgraphs=False)
    alias = {o.name: o.name for o in m.graph.output}
    for n in m.graph.node:  # v_out_i may leave through an Identity
        if n.op_type == "Identity" and n.output[0] in alias:
            alias[n.input[0]] = n.output[0]
    elem = m.graph.input[0].type.tensor_type.elem_type
    forced = []
    for i in range(n_states):
        node = _node_for_state(nodes, i, alias)
        if node is None:
            raise ValueError(f"no step node carries membrane {state_input_name(i)}")
        dims = [f"b{i}_{k}" for k in range(ranks[i])]
        cur, spikes = node.input[0], node.output[0]
        node.input[0], node.output[0] = f"verify_x_{i}", f"verify_own_{i}"
        m.graph.input.extend([helper.make_tensor_value_info(f"verify_x_{i}", elem, dims),
                              helper.make_tensor_value_info(f"verify_ref_{i}", elem, dims)])
        m.graph.node.extend([helper.make_node("Identity", [f"verify_ref_{i}"], [spikes]),
                             helper.make_node("Identity", [cur], [f"verify_cur_{i}"])])
        m.graph.output.extend([helper.make_tensor_value_info(f"verify_own_{i}", elem, None),
                               helper.make_tensor_value_info(f"verify_cur_{i}", elem, None)])
        forced.append((i, cur))
    return m, forced


def _forced_run(ctx: VerifyContext, target: Target, run: Run, calls_of) -> Dict[int, LayerFigures]:
    """The teacher-forced stepping of an ONNX step file (module docstring); fills the layers' neuron counts."""
    import onnx

    from ..runtime import load_runner
    from ..runtime.stream import neuron_states, stream_steps
    from .layers import dequantized_by, init_value

    model = onnx.load(str(target.path))
    all_states = ctx.manifest.states  # at the manifest's top level (one place); the readout's window is carried
    states = neuron_states(all_states)
    first = calls_of(ctx.refs[0][3])
    forced, currents = forced_step_model(model, len(states), [first[i].x.ndim - 1 for i in range(len(states))])
    producer = {o: n for n in model.graph.node for o in n.output}
    qp = {}
    for i, cur in currents:
        dq = dequantized_by(producer, cur)
        qp[i] = (init_value(model, dq.input[1]), init_value(model, dq.input[2] if len(dq.input) > 2 else None)) \
            if dq is not None else (None, None)
    path = ctx.tmp / f"forced_{target.path.stem}.onnx"
    onnx.save(forced, str(path))
    figures: Dict[int, LayerFigures] = {}
    layer_of = _layer_of(ctx, states)
    stats = {i: LayerStat(layer_of[i], ctx.infos[layer_of[i]].name, ctx.infos[layer_of[i]].op_type)
             for i in range(len(states))}
    with load_runner(path, target.backend, **target.options) as runner:
        for _name, x, _out, calls in ctx.refs:
            _forced_input(runner, all_states, stream_steps(x, ctx.io), calls_of(calls), stats, figures, qp)
    run.layers = [stats[i] for i in sorted(stats)]
    run.neuron_checked = True
    return figures


def _forced_input(runner, states: list, x: np.ndarray, by: list, stats: Dict[int, LayerStat],
                  figures: Dict[int, LayerFigures], qp: dict) -> None:
    """One input through the forced step file: the reference's currents and spikes fed at every step."""
    def feeds(t):
        return {**{f"verify_x_{i}": np.ascontiguousarray(by[i].x[t]) for i in stats},
                **{f"verify_ref_{i}": np.ascontiguousarray(by[i].y[t]) for i in stats}}

    def collect(t, _feeds, out):
        for i, st in stats.items():
            own = np.asarray(out[f"verify_own_{i}"], np.float32)
            st.neuron_equal += int((own == by[i].y[t]).sum())
            st.neuron_total += int(own.size)
            cur = np.asarray(out[f"verify_cur_{i}"]).reshape(by[i].x[t].shape)
            compare(figures.setdefault(i, LayerFigures()), cur, by[i].x[t], *qp[i])

    _stream(runner, states, x, feeds, collect)


def _layer_of(ctx: VerifyContext, states: list) -> List[int]:
    """The reference layer index of each membrane (by the module name the manifest records)."""
    by_name = {info.name: index for index, info in ctx.infos.items()}
    return [by_name.get(str(s.get("layer")), i) for i, s in enumerate(states)]


def _calls_by_state(ctx: VerifyContext, states: list):
    from ..runtime.stream import neuron_states

    states = neuron_states(states)
    layer_of = _layer_of(ctx, states)

    def calls_of(calls) -> list:
        by_layer = {c.layer: c for c in calls}
        return [by_layer[layer_of[i]] for i in range(len(states))]
    return calls_of


def _end_to_end(ctx: VerifyContext, target: Target, run: Run, runner) -> None:
    """Each input stepped as a stream carries it (the recorded I/O: ``BT`` transposed, a static image fed every
    step) against the multi-step reference with the same I/O; with ``--readout``, the readout's window checked."""
    from ..numerics import max_abs_diff
    from ..runtime.stream import readout_state, stream_result, stream_steps
    from .reference import top1

    states = ctx.manifest.states
    window = readout_state(states)
    for _name, x, ref_out, _calls in ctx.refs:
        check = _WindowCheck(window, _window_readout(ctx, window)) if window is not None else None
        ys = _stream(runner, states, stream_steps(x, ctx.io), collect=check)
        y = stream_result(ys, ctx.io)
        if y.shape != ref_out.shape:
            raise ValueError(f"stepped output {list(y.shape)} differs from the model's {list(ref_out.shape)}")
        run.max_abs_diff = max_abs_diff(y, ref_out, run.max_abs_diff)
        run.top1_equal += int((top1(y, ctx.io) == top1(ref_out, ctx.io)).sum())
        run.top1_total += int(top1(ref_out, ctx.io).shape[0])
        if check is not None:
            check.finish(y, run)


class _WindowCheck:
    """A ``--readout`` streaming artifact's readout state (the output spikes of the last T steps, newest last):
    each step must carry the window one step on (the new ``v_out``'s older entries are the ``v_in``'s newer ones,
    bit for bit), and the last step's readout must be the reference readout of the artifact's own final window. A
    tampered window (scaled, dropped, shifted the wrong way) fails as a defect of the readout."""

    def __init__(self, state: dict, readout):
        self.state, self.readout, self.problem, self.window = state, readout, None, None

    def __call__(self, t: int, feeds: dict, out: dict) -> None:
        v_in = np.asarray(feeds[self.state["input"]], np.float32)
        v_out = np.asarray(out[self.state["output"]], np.float32)
        self.window = v_out
        if self.problem is None and (v_out.shape != v_in.shape or not np.array_equal(v_out[:, :-1], v_in[:, 1:])):
            self.problem = (f"the readout state {self.state['input']} -> {self.state['output']} is not carried: at "
                            f"step {t} the window's older steps are not the ones fed in")

    def finish(self, y: np.ndarray, run: Run) -> None:
        if self.problem is None and self.window is not None:
            kind = self.readout.kind
            expected = self.readout(np.ascontiguousarray(np.swapaxes(self.window, 0, 1)))
            # mean: a count, exact in every backend; lif-rate: a float sum (its order is the backend's)
            ok = np.array_equal(expected, y) if kind == "mean" else np.allclose(expected, y, rtol=1e-5, atol=0)
            if not ok:
                self.problem = (f"the step's readout is not the {kind} readout of its own window (max |diff| "
                                f"{float(np.abs(expected - y).max()):.3g})")
        if self.problem and not any(d.get("name") == "readout" for d in run.defects):
            run.defects.append({"layer": None, "name": "readout", "text": self.problem})


def _window_readout(ctx: VerifyContext, state: dict):
    """The readout the window state names (lif-rate: with the output layer's tau / delta_t, as the export took)."""
    from ..early_exit import Readout
    from ..errors import UserError

    if state.get("readout") != "lif-rate":
        return Readout("mean")
    last = (ctx.manifest.neurons or [{}])[-1]
    tau, dt = last.get("tau"), last.get("delta_t")
    if not isinstance(tau, (int, float)) or not isinstance(dt, (int, float)) or not tau > 0 or not dt > 0:
        raise UserError("the manifest's output layer has no positive tau / delta_t for the lif-rate readout")
    return Readout("lif-rate", float(tau), float(dt))


def _defects(run: Run, figures: Dict[int, LayerFigures]) -> None:
    from .layers import defect_text

    tol = FLOAT_TOLERANCE.get(run.precision, FLOAT_TOLERANCE["float32"])
    for layer in run.layers:
        fig = figures.get(next(i for i, la in enumerate(run.layers) if la is layer))
        text = defect_text(layer, fig, tol) if fig is not None else None
        if text:
            run.defects.append({"layer": layer.index, "name": layer.name, "text": text,
                                "input_max_rel_diff": fig.rel})


def run_stream_target(ctx: VerifyContext, target: Target) -> Run:
    from ..runtime import load_runner

    run = Run(target.label, target.format, target.backend, target.variant, precision=target.precision)
    if target.error or target.skip:
        run.status, run.reason = ("error", target.error) if target.error else ("skipped", target.skip)
        run.passed = False if target.error else None
        return run
    ctx.say(f"stepping {target.label} on {target.backend} {target.variant}".rstrip())
    try:
        with load_runner(target.path, target.backend, **target.options) as runner:
            _end_to_end(ctx, target, run, runner)
        if target.format == "onnx":
            calls_of = _calls_by_state(ctx, ctx.manifest.states)
            _defects(run, _forced_run(ctx, target, run, calls_of))
            run.layer_check = "every step node teacher-forced over T steps, membranes carried by the file's state I/O"
        else:  # the scripted reference step on PyTorch's kernels: the stepped output itself must be exact
            run.neuron_checked = run.max_abs_diff == 0.0
            run.neuron_note = ("" if run.neuron_checked else "the TorchScript step file is checked end to end: its "
                               f"stepped output differs from the multi-step reference by {run.max_abs_diff:.3g}")
            run.layer_check = "end to end (stepped output against the multi-step reference, bit for bit)"
    except Exception as exc:  # a runtime that crashes on the artifact fails it
        text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        run.status, run.reason, run.passed = "error", text, False
        return run
    ctx.rule.judge(run, None)
    return run


def verify_streaming(folder: Path, manifest, options, rule, progress=None) -> dict:
    """Verify a streaming folder (module docstring); the report has the multi-step one's form."""
    from .summary import report

    if options.input_file is None and options.samples == 0:
        options.samples = None
    with tempfile.TemporaryDirectory(prefix="dsr-verify-") as tmpdir:
        ctx = build_context(folder, manifest, options, rule, progress=progress)  # the reference with the same io
        ctx.tmp = Path(tmpdir)
        targets: List[Target] = []
        for art in manifest.artifacts:
            targets += artifact_targets(ctx, art)
        runs = [run_stream_target(ctx, t) for t in targets]
    return report(ctx, runs, stepped=f"{manifest.T} steps from the manifest's initial membranes")
