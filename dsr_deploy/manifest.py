"""``DIR/manifest.json``: read, validate and write an export folder's manifest (torch-free).

An export folder is untrusted input (someone may send you one): every reader goes through
:func:`read_manifest` / :func:`parse_manifest`, which check the schema version, the type and range of every key
dsr-deploy reads, and that every artifact path stays inside the folder (no absolute paths, no ``..``, no
symlink leading out). A bad manifest is one :class:`~dsr_deploy.errors.UserError` line naming the file and the
key, raised before anything is printed or loaded.

The schema is declarative: a :class:`~dsr_deploy.schema.Record` per object (the manifest, ``model``, one
artifact, one neuron, one streaming state) maps each key to a checker. Keys a record does not know are kept as
they are (a newer exporter may add fields); a key it knows must have the right type. A field is added in one
line, here or from the module that owns it::

    from dsr_deploy.manifest import ARTIFACT, optional, string
    ARTIFACT.add("precision", optional(string))

Keys (schema 1): ``schema``, ``dsr_deploy_version``, ``created``, ``mode`` (multistep | streaming), ``model``
(``spec``, ``checkpoint``, ``trust_pickle``: what the export was made from; ``trust_pickle`` records that the
export needed it and never grants trust to a reader), ``input_shape`` ``[T, B, ...]``, ``T``, ``layout``,
``dtype``, ``dynamic_batch``, ``lowering``, ``target`` (export ``--target``), ``neurons`` (one record per layer),
``artifacts`` (``[{format, path, ...}]``, paths relative to the folder), ``inputs`` / ``outputs`` (names), ``io``;
streaming exports add ``step_shape`` and ``states`` (at the top level only).

Code outside this module reads a manifest through :class:`Manifest`'s accessors (``m.io``, ``m.states``,
``m.step_shape``, ...), never by raw key (tests/test_architecture.py checks it). The checkers are
:mod:`dsr_deploy.schema`'s (re-exported here).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, List, Mapping, Optional, Tuple, Union

from .contract import READOUT_KINDS, TARGETS
from .errors import UserError
from .schema import (  # noqa: F401  (the checkers are re-exported: fields are added from here)
    MAX_ELEMENTS,
    Check,
    Invalid,
    Record,
    boolean,
    dims,
    finite,
    integer,
    join_path,
    list_of,
    name_list,
    nonempty_string,
    number,
    one_of,
    optional,
    relative_path,
    settings_map,
    show,
    string,
    string_map,
)

MANIFEST = "manifest.json"
SCHEMA_VERSION = 1
SUPPORTED_SCHEMAS = (1,)
MODES = ("multistep", "streaming")
MAX_BYTES = 16 << 20  # a manifest is a few KiB; refuse to parse a huge file


def _artifacts(v: Any) -> list:
    # {"onnx": "model.onnx"} / {"onnx": {...}}: a hand-written spelling, normalised to the list form.
    if isinstance(v, dict):
        items = []
        for k, x in v.items():
            if isinstance(x, dict):
                items.append({**x, "format": k})
            elif isinstance(x, str):
                items.append({"format": k, "path": x})
            else:
                raise Invalid(f".{k}: expected a path or an artifact object, got {show(x)}")
        v = items
    return list_of(ARTIFACT)(v)


def _schema(v: Any) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v not in SUPPORTED_SCHEMAS:
        raise Invalid(f"unknown schema version {show(v)} "
                      f"(this dsr-deploy reads {', '.join(map(str, SUPPORTED_SCHEMAS))}; "
                      "a newer dsr-deploy wrote it?)")
    return v


MODEL = Record("model", {
    "spec": optional(nonempty_string),
    "checkpoint": optional(nonempty_string),
    "trust_pickle": boolean,
    "weights_sha256": optional(nonempty_string),  # digest of the exported weights (verify compares)
    "settings": optional(settings_map),  # the factory's keyword arguments (--set, the checkpoint's)
    "assumed_defaults": optional(settings_map),  # settings neither gave (a record; warned at export)
})

IO = Record("io", {  # how the exported model takes its input and gives its output (export options)
    "input_layout": nonempty_string,
    "output": nonempty_string,
    "per_step_readout": boolean,  # export --per-step-readout: a second output, the readout after every step
})


STATE = Record("state", {
    "input": nonempty_string, "output": nonempty_string, "shape": dims(min_rank=0), "dtype": string,
    "initial": one_of("zeros", "fill"), "initial_value": optional(number), "neuron": integer(0), "layer": string,
    "readout": one_of(*READOUT_KINDS),  # streaming --readout: this state is the readout's window, not a membrane
}, required=("input", "output", "shape"))



QUANTIZATION = Record("quantization", {  # export --precision int8 (dsr_deploy/export/int8/)
    "method": nonempty_string,
    "calibration_samples": integer(1),
    "quantized_layers": integer(0),
    "float_layers": string_map,
    "rounding_steps_max": finite(),  # the int8 layers' worst parameter rounding, in steps (int8/sensitivity.py)
    "currents": integer(0),
    "weights": string,
    "all_layers": boolean,
    "neuron": one_of("qdq", "quantized"),
    "quantized_neurons": integer(0),
    "activations": one_of("uint8", "int8"),  # --int8-activations (int8: the TensorRT form); absent: uint8
    "layout": one_of("nchw", "nhwc"),  # --int8-layout (nhwc: channels-last for ONNX Runtime's CPU)
    "folded_batchnorms": integer(0),  # BatchNorms folded into the convolutions feeding them (int8/residual.py)
    "spike_scale_convs": integer(0),
    "batchnorm_convs": integer(0),
})


def engine_profile(v: Any) -> dict:
    """A TensorRT plan's optimisation profile (``build-engine``): ``{input name: [min, opt, max] shapes}``."""
    if not isinstance(v, dict) or not all(isinstance(k, str) for k in v):
        raise Invalid(f"expected a mapping of input names to [min, opt, max] shapes, got {show(v)}")
    three = list_of(dims(min_rank=0), min_len=3)
    out = {}
    for k, x in v.items():
        try:
            shapes = three(x)
        except Invalid as exc:
            raise Invalid(f".{k}{join_path(exc)}") from None
        if len(shapes) != 3 or len({len(s) for s in shapes}) != 1:
            raise Invalid(f".{k}: expected three shapes of one rank (min, opt, max), got {show(x)}")
        out[k] = shapes
    return out


ARTIFACT = Record("artifact", {
    "format": nonempty_string,
    "path": relative_path,
    "mode": one_of(*MODES),
    "onnx": relative_path,  # a TensorRT plan's source model
    "dynamic_T": boolean,
    "dynamic_batch": boolean,
    "inputs": name_list,
    "outputs": name_list,
    "states": list_of(STATE),
    "quantization": QUANTIZATION,
    "profile": engine_profile,  # a TensorRT plan's batch / time ranges (triton-repo reads its max batch)
}, required=("format", "path"))

NEURON = Record("neuron", {
    "index": integer(0), "name": string, "kind": one_of("if", "lif", "sj_if", "sj_lif", "sj_plif"),
    "op_type": nonempty_string, "source": string,
    "v_threshold": number, "v_threshold_stored": number, "v_threshold_lower_bound": number, "clamped": boolean,
    "alpha": number, "tau": optional(number), "delta_t": optional(number), "decay": optional(number),
    "gain": optional(number), "T": optional(integer(1)),
    # SpikingJelly's nodes: hard reset value (None: soft), tau / sigmoid(w), decay_input
    "v_reset": optional(number), "leak": optional(number), "decay_input": optional(boolean),
    # sizes bench reads when a hand-written manifest gives them (neurons per sample per step)
    "size": integer(0), "neurons": integer(0), "numel": integer(0), "shape": dims(min_rank=0),
    "step_shape": dims(min_rank=0), "output_shape": dims(min_rank=0), "layout": string,
}, required=("index", "name", "op_type", "v_threshold", "alpha"))

# ``dsr-deploy exit-calibrate``'s rule and what it kept (dsr_deploy/early_exit.py writes it). Declared here, not by
# its owner, so every reader validates it, also one that never imports the early-exit code.
EXIT_RULES = ("max-prob", "margin", "stable", "full")
EXIT_READOUTS = READOUT_KINDS
EARLY_EXIT = Record("early_exit", {
    "rule": one_of(*EXIT_RULES), "threshold": finite(), "max_steps": optional(integer(1)),
    "readout": Record("readout", {"kind": one_of(*EXIT_READOUTS), "tau": finite(), "delta_t": finite()},
                      required=("kind",)),
    "calibration": Record("calibration", {"samples": integer(1), "T": integer(1), "max_drop": finite(),
                                          "full_accuracy": finite(0, 1), "accuracy": finite(0, 1),
                                          "mean_steps": finite(), "data": string}),
}, required=("rule", "threshold"))

TOP = Record("manifest", {
    "schema": _schema,
    "dsr_deploy_version": string,
    "created": string,
    "mode": one_of(*MODES),
    "model": MODEL,
    "input_shape": dims(min_rank=2),
    "T": integer(1),
    "layout": string,
    "dtype": nonempty_string,
    "dynamic_batch": boolean,
    "lowering": string,
    "target": one_of(*TARGETS),  # export --target (absent in manifests written before it)
    "neurons": list_of(NEURON),
    "artifacts": _artifacts,
    "inputs": name_list,
    "outputs": name_list,
    "input_names": list_of(nonempty_string),
    "output_names": list_of(nonempty_string),
    "step_shape": dims(min_rank=1),
    "states": list_of(STATE),
    "io": IO,
    "early_exit": EARLY_EXIT,
}, required=("artifacts",))


# ---------------------------------------------------------------------------------------------------------
# The validated manifest.


class Manifest(dict):
    """A validated manifest: the JSON object (``m["key"]`` as before) plus typed accessors and the folder it
    was read from (None for one built in memory)."""

    def __init__(self, data: Mapping, source: Optional[Path] = None, folder: Optional[Path] = None):
        super().__init__(data)
        self.source = source  # the manifest.json path, for messages
        self.folder = folder

    # -- typed accessors -------------------------------------------------------------------------------
    @property
    def where(self) -> str:
        return str(self.source) if self.source else MANIFEST

    @property
    def schema(self) -> Optional[int]:
        return self.get("schema")

    @property
    def mode(self) -> str:
        return self.get("mode", "multistep")

    @property
    def artifacts(self) -> List[dict]:
        return list(self["artifacts"])

    @property
    def neurons(self) -> List[dict]:
        return list(self.get("neurons") or [])

    @property
    def model(self) -> dict:
        return dict(self.get("model") or {})

    @property
    def model_spec(self) -> Optional[str]:
        return self.model.get("spec")

    @property
    def checkpoint(self) -> Optional[str]:
        return self.model.get("checkpoint")

    @property
    def model_settings(self) -> dict:
        return dict(self.model.get("settings") or {})

    @property
    def input_shape(self) -> Optional[Tuple[int, ...]]:
        s = self.get("input_shape")
        return tuple(s) if s is not None else None

    @property
    def T(self) -> Optional[int]:
        return self.get("T")

    @property
    def dtype(self) -> str:
        return self.get("dtype") or "float32"

    @property
    def layout(self) -> Optional[str]:
        return self.get("layout")

    @property
    def dynamic_batch(self) -> bool:
        return bool(self.get("dynamic_batch", True))

    @property
    def lowering(self) -> Optional[str]:
        return self.get("lowering")

    @property
    def target(self) -> str:
        return self.get("target") or "portable"

    @property
    def io(self) -> Optional[dict]:
        """The ``io`` record (how the artifact takes its input and gives its output); None: ``[T, B, ...]`` in,
        the spike train out."""
        v = self.get("io")
        return dict(v) if v else None

    @property
    def streaming(self) -> bool:
        return self.mode == "streaming"

    @property
    def step_shape(self) -> Optional[List[int]]:
        """A streaming export's one-step input shape ``[B, ...]`` (from ``input_shape`` when not recorded)."""
        s = self.get("step_shape")
        if s is None and self.input_shape is not None:
            s = list(self.input_shape[1:])
        return list(s) if s is not None else None

    @property
    def states(self) -> List[dict]:
        """A streaming export's membrane records (``[]`` for a multi-step export)."""
        return [dict(x) for x in self.get("states") or []]

    def with_artifact(self, entry: Mapping) -> dict:
        """The manifest's data with artifact ``entry`` added (replacing one with the same path)."""
        return {**self, "artifacts": [a for a in self.artifacts if a["path"] != entry["path"]] + [dict(entry)]}

    @property
    def version(self) -> Optional[str]:
        """The dsr-deploy version that wrote it."""
        return self.get("dsr_deploy_version")

    def require(self, *keys: str, why: str = "") -> None:
        """A one-line error when a key the caller needs is absent."""
        for key in keys:
            if self.get(key) is None:
                raise UserError(f"{self.where} has no {key!r}{' (' + why + ')' if why else ''}")

    def io_names(self) -> Tuple[Optional[List[str]], Optional[List[str]]]:
        """(input names, output names) the exporter wrote, each None when absent."""
        def names(key_list: str, key_names: str) -> Optional[List[str]]:
            if self.get(key_names) is not None:
                return list(self[key_names])
            v = self.get(key_list)
            if v is not None:
                return [e["name"] if isinstance(e, dict) else e for e in v]
            return None
        return names("inputs", "input_names"), names("outputs", "output_names")

    def path_of(self, art: Mapping, key: str = "path") -> Path:
        """The file ``art[key]`` names, inside the folder: a symlink that leads out of it is refused."""
        if self.folder is None:
            raise UserError(f"{self.where}: artifact paths need the export folder")
        return resolve_inside(self.folder, art[key], self.where)


def as_manifest(data: Mapping) -> Manifest:
    """``data`` as a :class:`Manifest` (unchanged when it is one; a plain mapping built in memory is wrapped, not
    validated), so readers use the accessors whatever they are given."""
    return data if isinstance(data, Manifest) else Manifest(data)


def resolve_inside(folder: Path, rel: str, where: str = MANIFEST) -> Path:
    """``folder / rel`` when it stays inside ``folder`` after resolving symlinks; a one-line UserError else."""
    relative_path_checked(rel, where)
    path = Path(folder) / rel
    root = Path(folder).resolve()
    try:
        real = path.resolve()
    except (OSError, RuntimeError) as exc:  # a symlink loop
        raise UserError(f"{where}: artifact {rel!r} cannot be resolved ({exc})") from None
    if real != root and root not in real.parents:
        raise UserError(f"{where}: artifact {rel!r} leads out of the export folder (to {real}); refused")
    return path


def relative_path_checked(rel: Any, where: str) -> str:
    try:
        return relative_path(rel)
    except Invalid as exc:
        raise UserError(f"{where}: artifact path {exc}") from None


def parse_manifest(data: Any, source: Union[str, Path, None] = None, folder: Union[str, Path, None] = None) -> Manifest:
    """Validate a manifest object (already parsed JSON); with ``folder``, also that every listed path stays
    inside it."""
    where = str(source) if source else MANIFEST
    try:
        checked = TOP(data)
    except Invalid as exc:
        raise UserError(f"{where} is not a valid dsr-deploy manifest: {str(exc).lstrip('.')}") from None
    m = Manifest(checked, Path(source) if source else None, Path(folder) if folder else None)
    if m.folder is not None:
        from .input_files import refuse_special

        for art in m.artifacts:
            refuse_special(m.path_of(art), "artifact")  # a FIFO would block its reader forever
            if "onnx" in art:
                refuse_special(m.path_of(art, "onnx"), "artifact")
    return m


def read_manifest(folder: Union[str, Path]) -> Manifest:
    """Read and validate ``folder/manifest.json``; a one-line UserError for every way it can be wrong."""
    folder = Path(folder)
    path = folder / MANIFEST
    if not folder.is_dir():
        raise UserError(f"{folder} is not an export folder (not a directory)")
    if not path.is_file():
        raise UserError(f"{folder} is a folder without {MANIFEST} (not an export folder written by "
                        "`dsr-deploy export`)")
    try:
        if path.stat().st_size > MAX_BYTES:
            raise UserError(f"{path} is {path.stat().st_size} bytes; a manifest is at most {MAX_BYTES}")
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise UserError(f"{path} is not UTF-8 text") from None
    except OSError as exc:
        raise UserError(f"cannot read {path}: {exc.strerror or exc}") from None
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise UserError(f"{path} is not valid JSON: {exc}") from None
    except RecursionError:
        raise UserError(f"{path} is nested too deeply to be a manifest") from None
    return parse_manifest(data, path, folder)


def manifest_beside(path: Union[str, Path]) -> Optional[Manifest]:
    """The validated manifest of the export folder a file lives in (None when the folder has none)."""
    folder = Path(path).parent
    return read_manifest(folder) if (folder / MANIFEST).is_file() else None


def dumps(data: Mapping) -> str:
    return json.dumps(data, indent=2) + "\n"


def write_manifest(folder: Union[str, Path], data: Mapping) -> Manifest:
    """Validate ``data`` and write ``folder/manifest.json`` atomically (never a manifest a reader refuses)."""
    from .io import atomic_write_text

    folder = Path(folder)
    m = parse_manifest(dict(data), folder / MANIFEST, folder)
    atomic_write_text(folder / MANIFEST, dumps(m))
    return m
