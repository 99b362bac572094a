"""``export --precision int8``: the float32 ONNX export rewritten into a quantised Q/DQ graph, spikes exact."""
