"""FP16: float32 compute and weights in float16 (the ``quantize="fp16"`` scheme).

Graph inputs and outputs stay float32 (a cast at each side), so callers feed and get float32 as
with every other scheme. Casts to float32 inside the graph become casts to float16; every
node's types are re-inferred in order.
"""

from __future__ import annotations

import numpy as np

from qir.ir.graph import Graph
from qir.ir.opdef import infer_types
from qir.ir.types import DType, TensorType

_F32, _F16 = DType.FLOAT32, DType.FLOAT16


def _is_f32(value) -> bool:
    return value is not None and isinstance(value.type, TensorType) and value.type.dtype == _F32


def to_fp16(graph: Graph) -> int:
    """Rewrite ``graph`` in place to compute in float16; returns how many nodes now do."""
    for name, value in list(graph.constants.items()):
        if _is_f32(value):
            value.const = value.const.astype(np.float16)
            value.type = TensorType(_F16, value.type.shape)
    first = graph.nodes[0] if graph.nodes else None
    for value in list(graph.inputs):
        if _is_f32(value):
            cast = graph.add_node("elementwise.cast", [value], {"to": _F16},
                                  name=f"{value.name}_to_fp16", before=first)
            for use in [u for u in value.uses if u.node is not cast]:
                use.node.set_input(use.index, cast.output)
    converted = 0
    for node in list(graph.nodes):
        if node.op == "elementwise.cast" and node.attrs.get("to") == _F32:
            node.attrs["to"] = _F16
        was_f32 = [_is_f32(v) for v in node.outputs]
        types = infer_types(node, len(node.outputs))
        for value, t in zip(node.outputs, types):
            value.type = t
        converted += any(was_f32)
    outputs = []
    for value in graph.outputs:
        if isinstance(value.type, TensorType) and value.type.dtype == _F16:
            name = value.name
            graph.rename(value, f"{name}_fp16")
            value = graph.add_node("elementwise.cast", [value], {"to": _F32}, name=f"{name}_to_fp32",
                                   output_names=[name]).output
        outputs.append(value)
    graph.outputs = outputs
    return converted
