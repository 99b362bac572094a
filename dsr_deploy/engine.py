"""TensorRT engine building: ``dsr-deploy build-engine MODEL.onnx --out MODEL.plan``.

Written against the documented TensorRT 10 / 11 Python API (``tensorrt.Builder``, ``OnnxParser``,
``IOptimizationProfile``, ``IBuilderConfig``); see docs/tensorrt.md for what has and has not run on a GPU.

What happens, in order (everything up to step 3 needs neither TensorRT nor a GPU and is unit-tested):

1. read the ONNX inputs and the ``dsr`` custom nodes (and whether each has a model-local function fallback);
2. make one optimisation profile: every dynamic dimension is the time dimension T (dim 0 of a multi-step
   input ``[T, B, ...]``), the batch B (dim 1 there; dim 0 of streaming inputs ``x_t``, ``v_in_<i>``), and
   takes ``--timesteps`` / ``--batch`` MIN,OPT,MAX; any other dynamic dimension is an error;
3. find the dsr TensorRT plugin library (``libdsr_trt_plugin_dynamic.so``, loaded through TensorRT's registry, else
   ``libdsr_trt_plugin.so``, static registration) so the parser maps
   the ``dsr`` nodes (op_type = plugin name, ``plugin_namespace`` "dsr", ``plugin_version`` "1") to the plugin
   instead of inlining their function fallback;
4. import tensorrt (a one-line error naming the ``tensorrt`` extra when missing), require a GPU, load the
   plugin library, check the creators are registered, parse, configure (workspace, FP16 on TensorRT 10,
   timing cache), build, and write the engine atomically (and the updated timing cache);
5. when the ONNX model and the engine sit in one export folder, add the engine to its ``manifest.json``
   (format ``tensorrt``) so ``verify`` / ``bench`` / ``load_runner(DIR, backend="tensorrt")`` find it.

TensorRT 11 networks are always strongly typed (no FP16 builder flag): precision comes from the ONNX tensor
types, so ``--fp16`` there is an error asking for a float16 ONNX model (``export --precision float16``). A float16 /
bfloat16 model is built with a strongly typed network on TensorRT 10 too.

TensorRT versions (onnx-tensorrt's parser): 10.0-10.6 always build a dsr node that carries a model-local function
from that function, never from the plugin, so with a plugin library there the build is refused unless
``allow_function_fallback``; from 10.7 a registered plugin wins. After parsing, the network's layers are inspected
(plugin layers vs loops) and what the engine really holds is recorded (``contents`` in the summary, ``dsr_path``
and ``plugin`` in the manifest entry).

One idea, over 400 lines: building an engine and recording what it really holds (parser version cut-offs,
plugin loading, the layer inspection) are one sequence against one API.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence, Union

from .contract import PLUGIN_NAMESPACE, PLUGIN_VERSION, SJ_SPIKE_OP_TYPES, SJ_STEP_OP_TYPES, is_streaming_input
from .errors import UserError
from .onnx_graph import dsr_nodes

Dim = Union[int, str, None]
SJ_OPS = frozenset((*SJ_SPIKE_OP_TYPES.values(), *SJ_STEP_OP_TYPES.values()))  # their plugins take float32 only


@dataclass(frozen=True)
class Range:
    """MIN,OPT,MAX of one dynamic dimension."""

    min: int
    opt: int
    max: int

    def __str__(self) -> str:
        return f"{self.min},{self.opt},{self.max}"


def parse_range(text: Optional[str], option: str) -> Optional[Range]:
    """``"1,8,32"`` -> Range(1, 8, 32); ``"8"`` -> Range(8, 8, 8); one-line errors naming ``option``."""
    if text is None or str(text).strip() == "":
        return None
    parts = [p.strip() for p in str(text).split(",")]
    if len(parts) == 1:
        parts = parts * 3
    if len(parts) != 3:
        raise UserError(f"{option}: expected MIN,OPT,MAX (or one value), got {text!r}")
    try:
        lo, opt, hi = (int(p) for p in parts)
    except ValueError:
        raise UserError(f"{option}: expected integers MIN,OPT,MAX, got {text!r}") from None
    if lo < 1:
        raise UserError(f"{option}: MIN must be >= 1, got {lo}")
    if not lo <= opt <= hi:
        raise UserError(f"{option}: need MIN <= OPT <= MAX, got {lo},{opt},{hi}")
    return Range(lo, opt, hi)


@dataclass(frozen=True)
class OnnxInfo:
    inputs: list[tuple[str, tuple[Dim, ...]]]
    dsr_ops: list[str]  # dsr op types used
    fallbacks: list[str]  # dsr op types with a model-local function
    dsr_nodes: int = 0  # how many dsr nodes the graph holds
    domains: tuple[str, ...] = ()  # the opset domains the model imports


def read_onnx(path: Union[str, Path]) -> OnnxInfo:
    import onnx

    from .input_files import refuse_special

    path = Path(path)
    refuse_special(path, "model")
    if not path.is_file():
        raise UserError(f"{path}: no such file")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:
        from .errors import first_line

        raise UserError(f"cannot read {path} as ONNX: {first_line(exc)}") from None
    initializers = {i.name for i in model.graph.initializer}
    inputs = []
    for vi in model.graph.input:
        if vi.name in initializers:
            continue
        dims = tuple(d.dim_value if d.HasField("dim_value") else (d.dim_param or None)
                     for d in vi.type.tensor_type.shape.dim)
        inputs.append((vi.name, dims))
    used = {n.op_type for n in dsr_nodes(model)}
    fallbacks = sorted(f.name for f in model.functions if f.domain == PLUGIN_NAMESPACE and f.name in used)
    nodes = len(dsr_nodes(model, subgraphs=False))  # the main graph's (TensorRT's plugin layers are counted there)
    return OnnxInfo(inputs, sorted(used), fallbacks, nodes, tuple(sorted(o.domain for o in model.opset_import)))


def dim_roles(name: str, rank: int) -> list[Optional[str]]:
    """Which dimension of input ``name`` is T and which is B (None: a feature dimension)."""
    roles: list[Optional[str]] = [None] * rank
    if is_streaming_input(name):
        if rank >= 1:
            roles[0] = "B"
    else:
        if rank >= 1:
            roles[0] = "T"
        if rank >= 2:
            roles[1] = "B"
    return roles


def plan_profile(inputs: Sequence[tuple[str, Sequence[Dim]]], batch: Optional[Range],
                 timesteps: Optional[Range]) -> dict[str, tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]]:
    """``{input name: (min shape, opt shape, max shape)}`` for one optimisation profile."""
    ranges = {"T": (timesteps, "--timesteps", "time"), "B": (batch, "--batch", "batch")}
    used = {"T": False, "B": False}
    out = {}
    for name, dims in inputs:
        lo, opt, hi = [], [], []
        for i, (d, role) in enumerate(zip(dims, dim_roles(name, len(dims)))):
            static = isinstance(d, int) and d > 0
            if role is not None:
                r, option, what = ranges[role]
                if static:
                    if r is not None and (r.min, r.opt, r.max) != (d, d, d):
                        raise UserError(f"{option} {r}: input {name!r} has a fixed {what} dimension of {d} "
                                        f"(re-export with a dynamic {what} dimension, or drop {option})")
                    lo.append(d), opt.append(d), hi.append(d)
                    continue
                if r is None:
                    raise UserError(f"input {name!r} has a dynamic {what} dimension (dim {i}); "
                                    f"pass {option} MIN,OPT,MAX")
                used[role] = True
                lo.append(r.min), opt.append(r.opt), hi.append(r.max)
            elif static:
                lo.append(d), opt.append(d), hi.append(d)
            else:
                raise UserError(f"input {name!r} dimension {i} ({d or '?'}) is dynamic but is neither the time nor "
                                "the batch dimension; export the model with fixed feature dimensions")
        out[name] = (tuple(lo), tuple(opt), tuple(hi))
    return out


def find_plugin(explicit: Optional[Union[str, Path]] = None) -> Optional[Path]:
    from .runtime.tensorrt import find_plugin_library

    return find_plugin_library(str(explicit) if explicit else None)


def check_plugin_needs(info: OnnxInfo, plugin: Optional[Path]) -> Optional[str]:
    """None when fine; a warning string when the function fallback will be used; UserError when impossible."""
    if not info.dsr_ops or plugin is not None:
        return None
    missing = sorted(set(info.dsr_ops) - set(info.fallbacks))
    if missing:
        raise UserError(f"the model uses dsr ops {', '.join(missing)} without a function fallback and no TensorRT "
                        "plugin library (libdsr_trt_plugin_dynamic.so or libdsr_trt_plugin.so) was found (run "
                        "`dsr-deploy plugins build` on a machine with CUDA, or pass --plugin PATH)")
    return ("no dsr TensorRT plugin library found: TensorRT will build the dsr layers from their ONNX function "
            "fallback (slower); build the plugin with `dsr-deploy plugins build`")


def trt_version(trt) -> tuple[int, int]:
    """(major, minor) of the tensorrt module (10.0 when unreadable)."""
    parts = str(getattr(trt, "__version__", "")).split(".")
    try:
        return int(parts[0]), int(parts[1]) if len(parts) > 1 else 0
    except ValueError:
        return 10, 0


#: onnx-tensorrt picks a registered plugin over a same-named model-local function from this version on; before
#: it, the local function always wins and the plugin is never used (TensorRT 10.7 CHANGELOG).
PLUGIN_WINS_FROM = (10, 7)
#: From here a node with a ``plugin_namespace`` attribute goes to the plugin before TensorRT's built-in ops.
NAMESPACE_FIRST_FROM = (10, 15)
#: Before this, a function formal named like an outer tensor bound the outer tensor (fixed in 10.8); the exporter
#: scopes every function name (export/onnx_functions.py), so this no longer matters for dsr-deploy's models.
FUNCTION_SCOPE_FIXED_IN = (10, 8)


def expected_dsr_path(version: tuple[int, int], info: OnnxInfo, plugin_loaded: bool) -> str:
    """What the parser will build the dsr nodes from: ``"plugin"``, ``"function"`` or ``"none"`` (no dsr node)."""
    if not info.dsr_ops:
        return "none"
    if not plugin_loaded:
        return "function"
    if info.fallbacks and tuple(version) < PLUGIN_WINS_FROM:
        return "function"
    return "plugin"


_PLUGIN_LAYER_TYPES = ("PLUGIN", "PLUGIN_V2", "PLUGIN_V3")
_LOOP_LAYER_TYPES = ("TRIP_LIMIT",)  # one per loop (a Scan / Loop body)


def network_contents(trt, network, info: OnnxInfo) -> dict:
    """What the parsed network holds for the dsr nodes: plugin layers vs loops (a Scan body) vs neither."""
    layer_type = getattr(trt, "LayerType", None)
    kinds = {getattr(layer_type, n) for n in _PLUGIN_LAYER_TYPES if hasattr(layer_type, n)}
    loops = {getattr(layer_type, n) for n in _LOOP_LAYER_TYPES if hasattr(layer_type, n)}
    plugin_layers, loop_layers, total = 0, 0, int(getattr(network, "num_layers", 0))
    for i in range(total):
        t = network.get_layer(i).type
        plugin_layers += t in kinds
        loop_layers += t in loops
    if not info.dsr_ops:
        path = "none"
    elif plugin_layers == 0:
        path = "function"
    elif plugin_layers >= info.dsr_nodes:
        path = "plugin"
    else:
        path = "mixed"
    return {"dsr_path": path, "dsr_nodes": info.dsr_nodes, "plugin_layers": plugin_layers, "loops": loop_layers,
            "layers": total}


def _model_precision(onnx_path: Path) -> str:
    """float32 / float16 / bfloat16: the element type of the model's first input; int8: a quantised Q/DQ model
    (``export --precision int8 --int8-activations int8``; :func:`tensorrt_quantization_problem`), which TensorRT
    builds with explicit quantisation from its Q/DQ nodes, strongly typed (stub-tested only here: no GPU)."""
    import onnx

    model = onnx.load(str(onnx_path), load_external_data=False)
    if any(n.op_type == "QuantizeLinear" and n.domain in ("", "ai.onnx") for n in model.graph.node):
        return "int8"
    init = {i.name for i in model.graph.initializer}
    names = {onnx.TensorProto.FLOAT16: "float16", onnx.TensorProto.BFLOAT16: "bfloat16"}
    for vi in model.graph.input:
        if vi.name not in init:
            return names.get(vi.type.tensor_type.elem_type, "float32")
    return "float32"


def tensorrt_quantization_problem(model) -> Optional[str]:
    """Why TensorRT's explicit quantisation would refuse the Q/DQ nodes of ``model`` (an ``onnx.ModelProto``), or
    None. TensorRT takes signed int8 (also fp8 / int4 / fp4) with zero point 0 only: the uint8 / asymmetric export
    (``export --precision int8``'s default) and int32 bias ``DequantizeLinear`` nodes are refused by its parser."""
    from onnx import TensorProto, numpy_helper

    inits = {i.name: i for i in model.graph.initializer}
    found = []  # (rank, text): the uint8 codes first (the main reason), then int32 biases, then zero points
    for node in model.graph.node:
        if node.op_type not in ("QuantizeLinear", "DequantizeLinear") or node.domain not in ("", "ai.onnx"):
            continue
        zp = inits.get(node.input[2]) if len(node.input) > 2 and node.input[2] else None
        data = inits.get(node.input[0])
        if zp is None and node.op_type == "QuantizeLinear":
            rank, what = 0, "gives uint8 codes (no zero point)"
        elif zp is not None and zp.data_type == TensorProto.UINT8:
            rank, what = 0, "uses uint8 codes"
        elif (zp is not None and zp.data_type == TensorProto.INT32) or (
                data is not None and data.data_type == TensorProto.INT32):
            rank, what = 1, "dequantises an int32 (bias) input"
        elif zp is not None and numpy_helper.to_array(zp).any():
            rank, what = 2, "has a non-zero zero point"
        else:
            continue
        found.append((rank, len(found), f"{node.op_type} {node.name or node.output[0]!r} {what}"))
    return min(found)[2] if found else None


def _check_tensorrt_quantization(onnx_path: Path) -> None:
    import onnx

    problem = tensorrt_quantization_problem(onnx.load(str(onnx_path), load_external_data=False))
    if problem:
        raise UserError(f"{onnx_path}: TensorRT takes only signed int8 Q/DQ with zero point 0, and {problem}; "
                        "re-export with `dsr-deploy export --precision int8 --int8-activations int8`")


def _check_model(onnx_path: Path, out: Path, workspace_mb: Optional[int], force: bool, batch, timesteps):
    """What the ONNX model is and the profile's shapes; one-line errors before TensorRT is imported."""
    if workspace_mb is not None and workspace_mb < 1:
        raise UserError(f"--workspace must be >= 1 MB, got {workspace_mb}")
    if out.exists() and not force:
        raise UserError(f"{out} exists; pass --force to overwrite it")
    if out.resolve() == onnx_path.resolve():
        raise UserError("--out must differ from the ONNX model")
    info = read_onnx(onnx_path)
    if not info.inputs:
        raise UserError(f"{onnx_path} has no inputs")
    if "com.microsoft" in info.domains:
        raise UserError(f"{onnx_path} uses ONNX Runtime's own ops (com.microsoft: an `--int8-layout nhwc` export "
                        "for ONNX Runtime's CPU); for TensorRT export with --target tensorrt (--int8-layout nchw "
                        "--int8-activations int8: the portable, signed Q/DQ graph)")
    shapes = plan_profile(info.inputs, batch, timesteps)
    precision = _model_precision(onnx_path)
    if precision == "int8":
        _check_tensorrt_quantization(onnx_path)
    return info, shapes, precision


def _check_tensorrt(trt, onnx_path: Path, info, lib, precision: str, fp16: bool, allow_function_fallback: bool,
                    log) -> str:
    """The dsr path TensorRT will take (plugin / function); one-line errors for what this TensorRT cannot do."""
    version = trt_version(trt)
    if fp16 and version[0] >= 11:
        raise UserError("--fp16: TensorRT 11 networks are strongly typed (no FP16 builder flag); export a float16 "
                        "model instead (dsr-deploy export --precision float16) and build that")
    if fp16 and precision != "float32":
        raise UserError(f"--fp16: {onnx_path} is already {precision} (its types set the precision); drop --fp16")
    expected = expected_dsr_path(version, info, lib is not None)
    sj = sorted(op for op in info.dsr_ops if op in SJ_OPS)
    if expected == "plugin" and sj and precision in ("float16", "bfloat16"):
        raise UserError(f"{onnx_path} is {precision} and its SpikingJelly layers ({', '.join(sj)}) have float32 "
                        "TensorRT plugins only; build the engine from a float32 export")
    if lib is not None and expected == "function":
        msg = (f"TensorRT {trt.__version__} builds dsr nodes that carry a model-local function from that function, "
               "never from the plugin (a registered plugin wins only from TensorRT 10.7)")
        if not allow_function_fallback:
            raise UserError(msg + "; upgrade TensorRT, or pass --allow-function-fallback to build the (slower) "
                            "function bodies")
        log(f"warning: {msg}; building the function bodies (--allow-function-fallback)")
    return expected


def _parse(trt, builder, logger, onnx_path: Path, precision: str):
    """The parsed network. TensorRT 10+ is explicit-batch only; a half-precision model is built strongly typed
    (its tensor types are the precision) on TensorRT 10 as on 11, where every network is strongly typed."""
    flags = 0
    if precision != "float32" and trt_version(trt)[0] < 11:
        flags = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = [str(parser.get_error(i).desc()) for i in range(parser.num_errors)]
        raise UserError(f"TensorRT could not parse {onnx_path}: {errors[0] if errors else 'unknown error'}"
                        + (f" (+{len(errors) - 1} more)" if len(errors) > 1 else ""))
    return network, parser


def _builder_config(trt, builder, network, onnx_path: Path, shapes: dict, fp16: bool, workspace_mb: Optional[int],
                    cache_path: Optional[Path], log):
    config = builder.create_builder_config()
    if workspace_mb is not None:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_mb) << 20)
    if fp16:
        if not getattr(builder, "platform_has_fast_fp16", True):
            log("warning: this GPU has no fast FP16; building with FP16 anyway")
        config.set_flag(trt.BuilderFlag.FP16)
    profile = builder.create_optimization_profile()
    for i in range(network.num_inputs):
        name = network.get_input(i).name
        if name not in shapes:
            raise UserError(f"TensorRT network input {name!r} is not an input of {onnx_path}")
        profile.set_shape(name, *shapes[name])
    config.add_optimization_profile(profile)
    if cache_path is not None:
        blob = cache_path.read_bytes() if cache_path.is_file() else b""
        cache = config.create_timing_cache(blob)
        if not config.set_timing_cache(cache, ignore_mismatch=False):
            raise UserError(f"--timing-cache {cache_path}: TensorRT rejected it (another TensorRT version or GPU?)")
    return config


def build_engine(onnx_path: Union[str, Path], out: Union[str, Path], *, fp16: bool = False,
                 batch: Optional[Range] = None, timesteps: Optional[Range] = None,
                 workspace_mb: Optional[int] = None, timing_cache: Optional[Union[str, Path]] = None,
                 plugin: Optional[Union[str, Path]] = None, force: bool = True, allow_function_fallback: bool = False,
                 log=print) -> dict:
    """Build and atomically write a TensorRT engine; returns a summary dict. See the module docstring."""
    onnx_path, out = Path(onnx_path), Path(out)
    info, shapes, precision = _check_model(onnx_path, out, workspace_mb, force, batch, timesteps)
    lib = find_plugin(plugin)
    warning = check_plugin_needs(info, lib)
    if warning:
        log(f"warning: {warning}")

    from .runtime.tensorrt import load_plugin_library, require_tensorrt

    trt = require_tensorrt("dsr-deploy build-engine")
    expected = _check_tensorrt(trt, onnx_path, info, lib, precision, fp16, allow_function_fallback, log)
    _require_gpu()
    logger = trt.Logger(trt.Logger.WARNING)
    loading = None
    if lib is not None and info.dsr_ops:
        loading = load_plugin_library(lib, trt)
    trt.init_libnvinfer_plugins(logger, "")
    registered = _check_creators(trt, info.dsr_ops) if lib is not None else {}
    builder = trt.Builder(logger)
    if builder is None:
        raise UserError("TensorRT could not create a builder (no usable GPU?)")
    network, _parser = _parse(trt, builder, logger, onnx_path, precision)  # the parser outlives the build
    contents = network_contents(trt, network, info)
    if lib is not None and contents["dsr_path"] not in ("plugin", "none") and expected == "plugin":
        log(f"warning: the plugin library is loaded but the network holds {contents['plugin_layers']} plugin "
            f"layer(s) for {info.dsr_nodes} dsr node(s): TensorRT {trt.__version__} built the rest from their "
            "function bodies")
    cache_path = Path(timing_cache) if timing_cache else None
    config = _builder_config(trt, builder, network, onnx_path, shapes, fp16, workspace_mb, cache_path, log)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise UserError(f"TensorRT failed to build an engine from {onnx_path} (see the TensorRT log above)")
    from .io import atomic_write_bytes

    atomic_write_bytes(out, bytes(memoryview(serialized)))
    if cache_path is not None:
        atomic_write_bytes(cache_path, bytes(memoryview(config.get_timing_cache().serialize())))
    summary = {"engine": str(out), "onnx": str(onnx_path), "tensorrt": str(trt.__version__), "fp16": fp16,
               "profile": {k: [list(s) for s in v] for k, v in shapes.items()},
               "plugin_library": str(lib) if lib else None, "dsr_ops": info.dsr_ops, "plugin_creators": registered,
               "timing_cache": str(cache_path) if cache_path else None, "precision": precision,
               "plugin_loading": loading, "contents": contents}
    summary["manifest"] = record_in_manifest(onnx_path, out, summary)
    return summary


def record_in_manifest(onnx_path: Path, engine: Path, summary: dict) -> Optional[str]:
    """When the ONNX model and the engine sit in one export folder, list the engine in its manifest.

    Then ``load_runner(DIR, backend="tensorrt")``, ``dsr-deploy verify DIR`` and ``bench DIR`` find it. Returns
    the manifest path, or None when there is no export folder.
    """
    from .manifest import MANIFEST, read_manifest, write_manifest

    folder = Path(onnx_path).resolve().parent
    manifest_path = folder / MANIFEST
    if Path(engine).resolve().parent != folder or not manifest_path.is_file():
        return None
    try:
        manifest = read_manifest(folder)
    except UserError:
        return None  # not ours to repair; the engine itself is written
    entry = {"format": "tensorrt", "path": Path(engine).name, "onnx": Path(onnx_path).name,
             "tensorrt": summary["tensorrt"], "fp16": summary["fp16"], "profile": summary["profile"],
             "precision": summary.get("precision", "float32"),
             # what the engine holds, read from the parsed network, not whether a library was found
             "plugin": summary.get("contents", {}).get("dsr_path") == "plugin",
             "dsr_path": summary.get("contents", {}).get("dsr_path")}
    write_manifest(folder, manifest.with_artifact(entry))
    return str(manifest_path)


def _require_gpu() -> None:
    try:
        import torch

        ok = torch.cuda.is_available()
    except ImportError:  # pragma: no cover - torch is a core dependency
        ok = False
    if not ok:
        raise UserError("TensorRT needs an NVIDIA GPU and none is visible; build the engine on the GPU machine "
                        "that will run it")


def _check_creators(trt, ops: Sequence[str]) -> dict[str, str]:
    """Every dsr op has a registered creator (namespace "dsr", else ""); returns op -> namespace found."""
    registry = trt.get_plugin_registry()
    found = {}
    for op in ops:
        for ns in (PLUGIN_NAMESPACE, ""):
            if registry.get_creator(op, PLUGIN_VERSION, ns) is not None:
                found[op] = ns
                break
        else:
            raise UserError(f"the TensorRT plugin library is loaded but no creator {op} (version {PLUGIN_VERSION}, "
                            f"namespace {PLUGIN_NAMESPACE!r}) is registered; rebuild it with "
                            "`dsr-deploy plugins build`")
    return found
