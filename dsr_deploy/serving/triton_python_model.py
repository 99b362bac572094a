"""The ``model.py`` of a ``triton-repo --backend python`` model (copied into ``<name>_py/1/``; not imported by
dsr_deploy): the repository's ONNX model run by ONNX Runtime inside Triton's python backend, with the dsr custom-op
library when the config's ``dsr_ops_library`` parameter names one (else the dsr nodes' function bodies run).

The config is the onnxruntime variant's: dynamic batching, or sequence batching with the START / READY controls and
the membranes as implicit state (Triton checks those config rules: initial_state dims, control inputs). The
membranes are also kept here per sequence (correlation id), as the python backend does not update implicit state
from a response; START zeroes them in the graph and the sequence end releases them.
"""

import json
import os

import numpy as np
import triton_python_backend_utils as pb_utils  # provided by Triton's python backend


class TritonPythonModel:
    def initialize(self, args):
        import onnxruntime as ort

        config = json.loads(args["model_config"])
        params = config.get("parameters") or {}
        library = (params.get("dsr_ops_library") or {}).get("string_value", "")
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        if library:
            options.register_custom_ops_library(library)  # a library that fails to load fails the model
        path = os.path.join(args["model_repository"], args["model_version"], "model.onnx")
        self.session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        self.inputs = [i.name for i in self.session.get_inputs()]
        self.outputs = [o.name for o in self.session.get_outputs()]
        seq = config.get("sequence_batching") or {}
        self.states = [(s["input_name"], s["output_name"], [int(d) for d in s["dims"]]) for s in seq.get("state", [])]
        self.batched = int(config.get("max_batch_size", 0)) > 0
        self.kept = {}  # correlation id -> {state input: membranes}, when Triton does not pass implicit state

    def _feeds(self, request):
        feeds = {}
        for name in self.inputs:
            t = pb_utils.get_input_tensor_by_name(request, name)
            if t is not None:
                feeds[name] = t.as_numpy()
        if self.states:
            # The membranes this model returned last for the sequence win over the state input: the python backend
            # of tritonserver 2.51 passes the initial state with every request and does not take the state outputs
            # back (measured), so without this a sequence would restart at every step. START zeroes in the graph.
            batch = next(iter(feeds.values())).shape[0] if self.batched else None
            kept = self.kept.get(request.correlation_id(), {})
            for name, _, dims in self.states:
                if name in kept:
                    feeds[name] = kept[name]
                elif name not in feeds:
                    feeds[name] = np.zeros([batch, *dims] if self.batched else dims, np.float32)
        return feeds

    def execute(self, requests):
        responses = []
        state_outputs = {out: name for name, out, _ in self.states}
        for request in requests:
            try:
                values = dict(zip(self.outputs, self.session.run(self.outputs, self._feeds(request))))
                if self.states:
                    cid = request.correlation_id()
                    self.kept[cid] = {state_outputs[o]: v for o, v in values.items() if o in state_outputs}
                    if request.flags() & pb_utils.TRITONSERVER_REQUEST_FLAG_SEQUENCE_END:
                        self.kept.pop(cid, None)
                tensors = [pb_utils.Tensor(name, np.ascontiguousarray(v)) for name, v in values.items()]
                responses.append(pb_utils.InferenceResponse(output_tensors=tensors))
            except Exception as exc:  # one bad request answers with its error, the others still run
                responses.append(pb_utils.InferenceResponse(output_tensors=[], error=pb_utils.TritonError(str(exc))))
        return responses
