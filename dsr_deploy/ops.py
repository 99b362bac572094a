"""The ``dsr::if_spike`` / ``dsr::lif_spike`` operators: one inference op per neuron layer.

The schema is defined here, once. Kernels:

* ``CompositeExplicitAutograd``: the Python reference (:mod:`dsr_deploy.functional`), always registered, so
  every device works with identical results when nothing native is built;
* ``CPU`` / ``CUDA``: the native spike-loop kernels of ``plugins/`` (``libdsr_torch_ops.so``), registered by the
  library itself through ``TORCH_LIBRARY_IMPL`` when it is found and loaded; backend keys win over the
  composite kernel, so loading the library swaps the kernels with no other change;
* a fake (meta) kernel so ``torch.export`` and dynamo see one op with known output shapes.

Both ops return ``(spikes, v_final)``; ``v_final`` is an empty tensor unless ``return_state`` is set.
``import dsr_deploy`` loads the native library when it is built (:func:`load_native`), so ``torch.ops.dsr.*`` runs the
native kernels from the first call; set ``DSR_DEPLOY_NATIVE=0`` to skip loading it.
"""

from __future__ import annotations

import hashlib
import os
import threading
from pathlib import Path
from typing import Optional

import torch
from torch import Tensor

from . import functional as F
from .contract import TORCH_NAMESPACE, TORCH_OPS_LIBRARY

NAMESPACE = TORCH_NAMESPACE
SCHEMAS = {
    "if_spike": "if_spike(Tensor x, float v_threshold, float alpha, Tensor? v_init=None, "
    "bool return_state=False) -> (Tensor, Tensor)",
    # decay / gain: the LIF coefficients by the layer's rule (functional.lif_coefficients); None: the double rule
    # from tau / delta_t (files written before the rule existed call the op without them).
    "lif_spike": "lif_spike(Tensor x, float v_threshold, float alpha, float tau, float delta_t, "
    "Tensor? v_init=None, bool return_state=False, float? decay=None, float? gain=None) -> (Tensor, Tensor)",
    # SpikingJelly's IF / LIF / PLIF (functional.sj_forward): charge "if" | "lif" | "plif"; v_reset None: soft reset
    "sj_spike": "sj_spike(Tensor x, str charge, float v_threshold, float? v_reset, float leak, bool decay_input, "
    "Tensor? v_init=None, bool return_state=False) -> (Tensor, Tensor)",
}

_lib = torch.library.Library(NAMESPACE, "DEF")  # the registrations live as long as this object
for _schema in SCHEMAS.values():
    _lib.define(_schema)


def _empty_state(x: Tensor) -> Tensor:
    return x.new_empty((0,), dtype=F.compute_dtype(x.dtype))


# Every kernel returns contiguous tensors whatever the input's strides (the native kernels copy a non-contiguous
# input first), and the fake kernel says so: torch.compile's inductor picks its own layouts for the tensors it
# feeds the op (channels-last conv outputs, say), and a fake output that copied those symbolic strides (an
# ``empty_like``) made it fail ("ValueRangeError: Invalid ranges", "cannot determine truth value of Relational").


def _if_reference(x, v_threshold, alpha, v_init=None, return_state=False):
    y, v = F.if_forward(x.contiguous(), v_threshold, alpha, v_init, return_state)
    return y, (v if v is not None else _empty_state(x))


def _lif_reference(x, v_threshold, alpha, tau, delta_t, v_init=None, return_state=False, decay=None, gain=None):
    y, v = F.lif_forward(x.contiguous(), v_threshold, alpha, tau, delta_t, v_init, return_state, decay, gain)
    return y, (v if v is not None else _empty_state(x))


def _sj_reference(x, charge, v_threshold, v_reset, leak, decay_input, v_init=None, return_state=False):
    y, v = F.sj_forward(x.contiguous(), charge, v_threshold, v_reset, leak, decay_input, v_init, return_state)
    return y, (v if v is not None else _empty_state(x))


_lib.impl("sj_spike", _sj_reference, "CompositeExplicitAutograd")
_lib.impl("if_spike", _if_reference, "CompositeExplicitAutograd")
_lib.impl("lif_spike", _lif_reference, "CompositeExplicitAutograd")


def _fake(x: Tensor, v_init: Optional[Tensor], return_state: bool):
    ct = F.compute_dtype(x.dtype)
    state = x.new_empty(x.shape[1:], dtype=ct) if return_state else x.new_empty((0,), dtype=ct)
    return x.new_empty(x.shape), state  # contiguous, like every kernel's output


@torch.library.register_fake("dsr::if_spike")
def _if_fake(x, v_threshold, alpha, v_init=None, return_state=False):
    return _fake(x, v_init, return_state)


@torch.library.register_fake("dsr::lif_spike")
def _lif_fake(x, v_threshold, alpha, tau, delta_t, v_init=None, return_state=False, decay=None, gain=None):
    return _fake(x, v_init, return_state)


@torch.library.register_fake("dsr::sj_spike")
def _sj_fake(x, charge, v_threshold, v_reset, leak, decay_input, v_init=None, return_state=False):
    return _fake(x, v_init, return_state)


# ---------------------------------------------------------------------------------------------------------
# The training modules' entry: the threshold as a tensor (a trained parameter), read inside the op.
# Reading it outside (``float(v_threshold)``) is a graph break under torch.compile: dynamo then compiles the
# code after every neuron call as a separate frame, recompiles those frames with dynamic shapes when the layers
# differ in shape, and inductor failed on them ("ValueRangeError: Invalid ranges [0:-1]", "cannot determine truth
# value of Relational"). Inside one opaque op the whole network is one graph of static shapes, and the op runs the
# same kernels (native or the Python reference) as eager, so compiled spikes equal eager spikes bit for bit.


@torch.library.custom_op("dsr::if_spike_vth", mutates_args=())
def if_spike_vth(x: Tensor, v_threshold: Tensor, alpha: float, native: bool) -> Tensor:
    """:func:`if_spike` with the threshold as a 0-d tensor; returns the spikes."""
    return if_spike(x, float(v_threshold), alpha, native=native)[0]


@torch.library.custom_op("dsr::lif_spike_vth", mutates_args=())
def lif_spike_vth(x: Tensor, v_threshold: Tensor, alpha: float, tau: float, delta_t: float, native: bool,
                  decay: Optional[float] = None, gain: Optional[float] = None) -> Tensor:
    """:func:`lif_spike` with the threshold as a 0-d tensor; returns the spikes."""
    return lif_spike(x, float(v_threshold), alpha, tau, delta_t, native=native, decay=decay, gain=gain)[0]


@if_spike_vth.register_fake
def _if_spike_vth_fake(x, v_threshold, alpha, native):
    return x.new_empty(x.shape)


@lif_spike_vth.register_fake
def _lif_spike_vth_fake(x, v_threshold, alpha, tau, delta_t, native, decay=None, gain=None):
    return x.new_empty(x.shape)


# ---------------------------------------------------------------------------------------------------------
# Native library discovery.

_state_lock = threading.Lock()
_native: dict = {"loaded": False, "path": None, "reason": "not looked for yet"}


PLUGIN_SOURCE_PACKAGE = "_plugin_src"  # the plugins/ sources as shipped inside the package (wheel, sdist)


def plugin_source_dir() -> Optional[Path]:
    """The ``plugins/`` CMake project: ``$DSR_DEPLOY_PLUGINS_SRC``, the copy inside the installed package, or the
    source checkout dsr_deploy runs from; None when there is none."""
    env = os.environ.get("DSR_DEPLOY_PLUGINS_SRC")
    here = Path(__file__).resolve().parent
    candidates = [Path(env)] if env else [here / PLUGIN_SOURCE_PACKAGE, here.parent / "plugins"]
    for c in candidates:
        if (c / "CMakeLists.txt").is_file() and (c / "core" / "dsr_spike.h").is_file():
            return c
    return None


_digests: dict = {}


def plugin_sources_digest(src: Path) -> str:
    """SHA-256 over the plugin sources (every file but docs and the package marker), by relative path: the same in a
    checkout and in an installed wheel, different as soon as one source changes."""
    key = str(src)
    if key not in _digests:
        h = hashlib.sha256()
        for p in sorted(q for q in src.rglob("*") if q.is_file()):
            rel = p.relative_to(src).as_posix()
            if p.suffix in (".md", ".pyc") or p.name == "__init__.py" or "__pycache__" in rel:
                continue
            h.update(rel.encode() + b"\0" + p.read_bytes() + b"\0")
        _digests[key] = h.hexdigest()
    return _digests[key]


def cache_root() -> Path:
    """The per-user cache: ``$DSR_DEPLOY_CACHE_DIR``, else ``$XDG_CACHE_HOME/dsr-deploy``, else
    ``~/.cache/dsr-deploy``."""
    env = os.environ.get("DSR_DEPLOY_CACHE_DIR")
    if env:
        return Path(env)
    xdg = os.environ.get("XDG_CACHE_HOME")
    if xdg:
        return Path(xdg) / "dsr-deploy"
    try:
        return Path.home() / ".cache" / "dsr-deploy"
    except RuntimeError:  # no home folder for this user
        import tempfile

        return Path(tempfile.gettempdir()) / f"dsr-deploy-cache-{os.getuid()}"


def build_key(src: Optional[Path] = None) -> Optional[str]:
    """``torch-<version>-<sources digest>``: a build made for other sources or another torch is never picked up."""
    src = src or plugin_source_dir()
    if src is None:
        return None
    return f"torch-{torch.__version__}-{plugin_sources_digest(src)[:16]}"


def default_library_dir() -> Optional[Path]:
    """Where ``dsr-deploy plugins build`` installs by default: ``<cache>/plugins/<build key>`` (never site-packages,
    which may be read-only and is shared by every torch version a venv ever had)."""
    key = build_key()
    return cache_root() / "plugins" / key if key else None


def library_dirs() -> list[Path]:
    """Where dsr_deploy looks for the libraries ``dsr-deploy plugins build`` makes, in order:
    ``$DSR_DEPLOY_LIB_DIR``, then the per-user cache folder of these sources and this torch."""
    dirs = []
    env = os.environ.get("DSR_DEPLOY_LIB_DIR")
    if env:
        dirs.append(Path(env))
    default = default_library_dir()
    if default is not None:
        dirs.append(default)
    return dirs


def find_library(name: str) -> Optional[Path]:
    for d in library_dirs():
        p = d / name
        if p.is_file():
            return p
    return None


def load_native() -> bool:
    """Load the native torch kernels once; returns whether they are registered."""
    if _native["reason"] != "not looked for yet":  # decided already: no lock on the per-call path
        return _native["loaded"]
    with _state_lock:
        if _native["loaded"] or _native["reason"] != "not looked for yet":
            return _native["loaded"]
        if os.environ.get("DSR_DEPLOY_NATIVE", "1") == "0":
            _native["reason"] = "disabled by DSR_DEPLOY_NATIVE=0"
            return False
        path = find_library(TORCH_OPS_LIBRARY)
        if path is None:
            _native["reason"] = f"{TORCH_OPS_LIBRARY} not built (run `dsr-deploy plugins build`)"
            return False
        try:
            torch.ops.load_library(str(path))
        except (OSError, RuntimeError) as exc:  # a library built against another torch, say
            from .errors import first_line

            _native["reason"] = f"{path} failed to load: {first_line(exc)}"
            return False
        _native.update(loaded=True, path=str(path), reason="loaded")
        return True


def native_status() -> dict:
    """``{"loaded": bool, "path": str|None, "reason": str}`` after trying to load the library."""
    load_native()
    return dict(_native)


def has_native_kernel(device_type: str) -> bool:
    """Whether a native kernel (not the Python reference) serves ``device_type`` ("cpu" / "cuda")."""
    if not load_native():
        return False
    key = {"cpu": "CPU", "cuda": "CUDA"}.get(device_type)
    return key is not None and torch._C._dispatch_has_kernel_for_dispatch_key(f"{NAMESPACE}::if_spike", key)


def if_spike(x: Tensor, v_threshold: float, alpha: float, v_init: Optional[Tensor] = None,
             return_state: bool = False, native: bool = True):
    """Run the IF op; ``native=False`` forces the Python reference."""
    if native:
        load_native()
        return torch.ops.dsr.if_spike(x, float(v_threshold), float(alpha), v_init, return_state)
    return _if_reference(x, float(v_threshold), float(alpha), v_init, return_state)


def lif_spike(x: Tensor, v_threshold: float, alpha: float, tau: float, delta_t: float,
              v_init: Optional[Tensor] = None, return_state: bool = False, native: bool = True,
              decay: Optional[float] = None, gain: Optional[float] = None):
    """Run the LIF op; ``native=False`` forces the Python reference. ``decay`` / ``gain``: see
    :func:`dsr_deploy.functional.lif_coefficients` (None: the double rule)."""
    args = (x, float(v_threshold), float(alpha), float(tau), float(delta_t), v_init, return_state,
            None if decay is None else float(decay), None if gain is None else float(gain))
    if native:
        load_native()
        return torch.ops.dsr.lif_spike(*args)
    return _lif_reference(*args)
