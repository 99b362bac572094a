"""Which dsr nodes an ONNX model holds: one answer for the writer, the runners, the engine builder, verify and
the streaming export. Works on the protobufs alone (``onnx`` is not imported here)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from .contract import DOMAIN


def dsr_nodes(model: Any, op_types: Iterable[str] | None = None, *, subgraphs: bool = True) -> list[Any]:
    """The ``dsr``-domain nodes of ``model`` (a ``ModelProto`` or a ``GraphProto``) in graph order, each followed
    by those of its subgraphs (Scan / Loop / If bodies, with ``subgraphs``); only ``op_types`` when given.

    Model-local functions are not walked: they are the fallback bodies *of* the dsr ops, not calls of them."""
    wanted = None if op_types is None else set(op_types)
    found: list[Any] = []

    def walk(graph) -> None:
        for node in graph.node:
            if node.domain == DOMAIN and (wanted is None or node.op_type in wanted):
                found.append(node)
            if subgraphs:
                for attr in node.attribute:
                    if attr.HasField("g"):
                        walk(attr.g)
                    for sub in attr.graphs:
                        walk(sub)

    walk(getattr(model, "graph", model))
    return found


def dsr_op_types(model: Any) -> set:
    """The op types of every dsr node of ``model`` and its subgraphs."""
    return {n.op_type for n in dsr_nodes(model)}


def has_dsr_nodes(path: Any) -> bool:
    """Whether the ONNX file ``path`` holds a dsr node; False for anything ``onnx`` cannot read (the backend that
    runs it reports its own error)."""
    try:
        import onnx

        return bool(dsr_nodes(onnx.load(str(path), load_external_data=False)))
    except Exception:  # noqa: BLE001
        return False


class GraphMaps:
    """A main graph's initializers, producers, consumers and output names, read once (rebuild after a rewrite)."""

    def __init__(self, model: Any):
        from collections import defaultdict

        self.model = model
        g = model.graph
        self.inits = {i.name: i for i in g.initializer}
        self.producer = {o: n for n in g.node for o in n.output if o}
        self.consumers: dict[str, list[Any]] = defaultdict(list)
        for n in g.node:
            for i in n.input:
                if i:
                    self.consumers[i].append(n)
        self.outputs = {o.name for o in g.output}
