"""Streaming (single-step) export and runtime, kept importable here for existing code.

The exporter is :mod:`dsr_deploy.export.streaming` (the step module and its writers); the runtime is
:mod:`dsr_deploy.runtime.stream` (:class:`StreamSession`); the I/O names are :mod:`dsr_deploy.contract`'s.
"""

from __future__ import annotations

from .export.streaming import (
                               IF_STEP_OP,
                               INPUT_NAME,
                               LIF_STEP_OP,
                               MODE,
                               ONNX_DOMAIN,
                               ONNX_DOMAIN_VERSION,
                               OUTPUT_NAME,
                               StreamingModule,
                               add_step_functions,
                               build_streaming_module,
                               export_onnx,
                               export_streaming,
                               export_torchscript,
                               register_formats,
                               state_input_name,
                               state_output_name,
                               step_functions,
                               write_streaming_onnx,
                               write_streaming_torchscript,
)
from .runtime.stream import StreamSession, manifest_states

__all__ = ["IF_STEP_OP", "INPUT_NAME", "LIF_STEP_OP", "MODE", "ONNX_DOMAIN", "ONNX_DOMAIN_VERSION", "OUTPUT_NAME",
           "StreamSession", "StreamingModule", "add_step_functions", "build_streaming_module", "export_onnx",
           "export_streaming", "export_torchscript", "manifest_states", "register_formats", "state_input_name",
           "state_output_name", "step_functions", "write_streaming_onnx", "write_streaming_torchscript"]
