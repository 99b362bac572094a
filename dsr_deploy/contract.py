"""The wire contract: every name another program reads from what dsr-deploy writes or loads.

ONNX files carry dsr nodes in the domain :data:`DOMAIN`; TensorRT finds their plugins by op type, namespace and
version; ONNX Runtime, TensorRT and PyTorch load the native libraries by file name; streaming artifacts and
servers exchange the step input, output and membrane states by name. Each of these is defined here once and
imported everywhere else (the native sources in ``plugins/`` restate them: ``plugins/README.md``).
"""

from __future__ import annotations

# -- ONNX: the dsr domain and its op types ------------------------------------------------------------------
DOMAIN = "dsr"  # ONNX domain of the dsr nodes and of their model-local function fallbacks
DOMAIN_VERSION = 1  # the opset version of DOMAIN in opset_import
SPIKE_OP_TYPES = {"if": "DSRIFSpike", "lif": "DSRLIFSpike"}  # whole-sequence neurons (multistep export)
STEP_OP_TYPES = {"if": "DSRIFStep", "lif": "DSRLIFStep"}  # one time step with membrane I/O (streaming export)
#: int8 exports (``--int8-neuron quantized``): the whole-sequence neurons on the current's codes (uint8 / int8),
#: giving spike codes of the same type.
QUANTIZED_OP_TYPES = {"if": "DSRIFSpikeQ", "lif": "DSRLIFSpikeQ"}
# SpikingJelly's IFNode / LIFNode / ParametricLIFNode (attributes: v_threshold, v_reset, hard_reset; LIF / PLIF also
# leak (tau, or sigmoid(w)) and decay_input); the same names with "Step" for the streaming single step.
SJ_SPIKE_OP_TYPES = {"sj_if": "SJIFSpike", "sj_lif": "SJLIFSpike", "sj_plif": "SJPLIFSpike"}
SJ_STEP_OP_TYPES = {"sj_if": "SJIFStep", "sj_lif": "SJLIFStep", "sj_plif": "SJPLIFStep"}
#: int8 exports for ONNX Runtime's CPU (``--int8-layout nhwc``): a channels-last quantised convolution whose input
#: is spike codes, event-driven (``com.microsoft.QLinearConv``'s inputs and attributes; its function body is that op).
SPIKE_CONV_OP_TYPES = {"conv": "SpikeQLinearConv"}
DSR_OPS = (*SPIKE_OP_TYPES.values(), *STEP_OP_TYPES.values(), *QUANTIZED_OP_TYPES.values(),
           *SJ_SPIKE_OP_TYPES.values(), *SJ_STEP_OP_TYPES.values(), *SPIKE_CONV_OP_TYPES.values())
#: The ops the TensorRT plugin libraries implement (every dsr op; plugins/tensorrt/).
TENSORRT_PLUGIN_OPS = (*SPIKE_OP_TYPES.values(), *STEP_OP_TYPES.values(), *QUANTIZED_OP_TYPES.values(),
                       *SJ_SPIKE_OP_TYPES.values(), *SJ_STEP_OP_TYPES.values())

# -- export targets: the runtime an export is for (manifest "target"; `dsr-deploy export --target`) -----------
TARGETS = ("portable", "onnxruntime-cpu", "tensorrt")
#: How logits are read from the output layer's spikes (export --readout; a streaming readout state; early exit).
READOUT_KINDS = ("mean", "lif-rate")

# -- TensorRT plugins ---------------------------------------------------------------------------------------
PLUGIN_NAMESPACE = "dsr"  # plugin_namespace attribute / creator namespace
PLUGIN_VERSION = "1"  # plugin_version attribute / creator version

# -- PyTorch custom ops: torch.ops.dsr.* ---------------------------------------------------------------------
TORCH_NAMESPACE = "dsr"

# -- native library file names (built by `dsr-deploy plugins build`) ---------------------------------------------
TORCH_OPS_LIBRARY = "libdsr_torch_ops.so"
ORT_OPS_LIBRARY = "libdsr_ort_ops.so"
TRT_PLUGIN_LIBRARY = "libdsr_trt_plugin.so"
TRT_DYNAMIC_PLUGIN_LIBRARY = "libdsr_trt_plugin_dynamic.so"
KERNELS_LIBRARY = "libdsr_kernels.so"

# -- streaming (single-step) I/O names -------------------------------------------------------------------------
STREAM_INPUT = "x_t"  # the step's input  [B, ...]
STREAM_OUTPUT = "y_t"  # the step's output
STATE_IN_PREFIX = "v_in_"  # membrane state of neuron layer i, fed in: v_in_0, v_in_1, ...
STATE_OUT_PREFIX = "v_out_"  # ... and returned: v_out_0, v_out_1, ...
# With export --readout the last pair (v_in_n / v_out_n, after the n membranes) is the readout's window, carried
# like a membrane (the manifest's state record says "readout"): every client and server carries it unchanged.

# -- serving past one machine -----------------------------------------------------------------------------------
# The streaming clients send each step's sequence id in this HTTP header (gRPC metadata: lower case) as well as in
# the request, so a load balancer can keep every step of a sequence on the replica that holds its membranes.
SEQUENCE_ID_HEADER = "X-DSR-Sequence-Id"


def nginx_header_variable(header: str = SEQUENCE_ID_HEADER) -> str:
    """nginx's variable for a request header: ``$http_`` + the name lower-cased, ``-`` as ``_``."""
    return "$http_" + header.lower().replace("-", "_")


def state_input_name(i: int) -> str:
    return f"{STATE_IN_PREFIX}{i}"


def state_output_name(i: int) -> str:
    return f"{STATE_OUT_PREFIX}{i}"


def is_streaming_input(name: str) -> bool:
    """The step input or a membrane state input."""
    return name == STREAM_INPUT or name.startswith(STATE_IN_PREFIX)

# -- early exit over time steps (dsr_deploy.early_exit) ---------------------------------------------------------
READOUT_STEPS = "readout_steps"  # export --per-step-readout: [T, B, classes], entry t = the readout of steps 0..t
EXIT_PREDICTION = "prediction"  # infer(..., early_exit=...): top-1 class per sample [B] (int64)
EXIT_STEPS = "steps"  # ... the time steps each sample used [B] (int64)
EXIT_READOUT = "readout"  # ... the readout each sample exited with [B, classes] (float32)
