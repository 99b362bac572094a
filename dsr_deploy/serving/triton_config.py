"""The ``config.pbtxt`` of a Triton model (parsable as Triton's ``inference.ModelConfig``)."""

from __future__ import annotations

from collections.abc import Sequence

from ..errors import UserError
from .triton_onnx import READY, START, Edge, state_pairs

#: ``--instance-kind`` -> Triton's instance group kind of the onnxruntime models (GPU: the CUDA execution provider).
INSTANCE_KINDS = {"cpu": "KIND_CPU", "gpu": "KIND_GPU"}


def _dims(dims, batched: bool) -> str:
    ds = dims[1:] if batched else dims
    return "[ " + ", ".join(str(d) if isinstance(d, int) and d > 0 else "-1" for d in ds) + " ]"


def _fixed_dims(edge: Edge, batched: bool) -> str:
    """dims of a state's ``initial_state``: Triton's sequence batcher refuses variable dims there. Without
    batching the state's first (batch) dim is part of its shape: a symbolic batch becomes 1 (one stream per
    sequence; the config's stream input and output say the same)."""
    ds = list(edge.dims[1:] if batched else edge.dims)
    if not batched and ds and not (isinstance(ds[0], int) and ds[0] > 0):
        ds[0] = 1
    if not all(isinstance(d, int) and d > 0 for d in ds):
        raise UserError(f"state {edge.name} has variable dims {edge.dims}: Triton's initial_state needs fixed "
                        "dims (export the model with fixed feature dimensions)")
    return "[ " + ", ".join(map(str, ds)) + " ]"


def _stream_edges(edges: Sequence[Edge], batched: bool) -> list[Edge]:
    """Without batching a streaming model runs one sequence of batch 1 per slot (a symbolic batch dim is fixed
    to 1, like the states'), so Triton refuses a request whose batch would not match the state."""
    if batched:
        return list(edges)
    return [Edge(e.name, e.elem_type, [1, *e.dims[1:]]) if e.dims and not (isinstance(e.dims[0], int)
                                                                        and e.dims[0] > 0) else e for e in edges]


def _io_block(kind: str, edges: Sequence[Edge], batched: bool) -> str:
    items = [f'  {{\n    name: "{e.name}"\n    data_type: {e.triton_type}\n    dims: {_dims(e.dims, batched)}\n  }}'
             for e in edges]
    return f"{kind} [\n" + ",\n".join(items) + "\n]\n"


def make_config(name: str, platform: str, inputs: Sequence[Edge], outputs: Sequence[Edge], max_batch: int,
                streaming: bool, controls: bool, instance_kind: str, queue_delay_us: int = 100,
                idle_us: int = 60_000_000, ops_library: str | None = None) -> str:
    """The text of a config.pbtxt (parsable as Triton's ``inference.ModelConfig``)."""
    batched = max_batch > 0
    lines = [f'name: "{name}"']
    backends = {"onnxruntime_onnx": "onnxruntime", "python": "python"}
    lines.append(f'backend: "{backends[platform]}"' if platform in backends else f'platform: "{platform}"')
    lines.append(f"max_batch_size: {max_batch}")
    text = "\n".join(lines) + "\n"
    if streaming:
        pairs = state_pairs(inputs, outputs)
        state_names = {e.name for p in pairs for e in p}
        ins = [e for e in inputs if e.name not in state_names | {START, READY}]
        text += _io_block("input", _stream_edges(ins, batched), batched)
        text += _io_block("output", _stream_edges([e for e in outputs if e.name not in state_names], batched),
                          batched)
        seq = ["sequence_batching {", f"  max_sequence_idle_microseconds: {idle_us}"]
        seq.append(f"  direct {{\n    max_queue_delay_microseconds: {queue_delay_us}\n  }}" if batched
                   else "  direct { }")
        if controls:
            seq.append("  control_input [")
            seq.append(",\n".join(
                f'    {{\n      name: "{ctl}"\n      control [\n        {{\n          kind: {kind}\n'
                f"          bool_false_true: [ false, true ]\n        }}\n      ]\n    }}"
                for ctl, kind in ((START, "CONTROL_SEQUENCE_START"), (READY, "CONTROL_SEQUENCE_READY"))))
            seq.append("  ]")
        seq.append("  state [")
        seq.append(",\n".join(
            f'    {{\n      input_name: "{vin.name}"\n      output_name: "{vout.name}"\n'
            f"      data_type: {vin.triton_type}\n      dims: {_fixed_dims(vin, batched)}\n"
            f"      initial_state {{\n        data_type: {vin.triton_type}\n        dims: {_fixed_dims(vin, batched)}\n"
            f'        zero_data: true\n        name: "zero_membrane"\n      }}\n    }}'
            for vin, vout in pairs))
        seq.append("  ]")
        seq.append("}")
        text += "\n".join(seq) + "\n"
    else:
        text += _io_block("input", inputs, batched)
        text += _io_block("output", outputs, batched)
        if batched:
            text += f"dynamic_batching {{\n  max_queue_delay_microseconds: {queue_delay_us}\n}}\n"
    text += f"instance_group [\n  {{\n    kind: {instance_kind}\n    count: 1\n  }}\n]\n"
    if ops_library and platform == "python":  # the python variant's model.py registers it with ONNX Runtime
        text += (f'parameters [\n  {{\n    key: "dsr_ops_library"\n    value: {{ string_value: "{ops_library}" }}\n'
                 "  }\n]\n")
    elif ops_library:
        text += f'model_operations {{\n  op_library_filename: [ "{ops_library}" ]\n}}\n'
    return text
