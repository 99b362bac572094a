"""Serving: Triton model repositories (:mod:`.triton_repo`) and a PyTriton server (:mod:`.pytriton_server`)."""
