"""Small helpers shared by the op-family tests."""

from __future__ import annotations

from qir.ir.graph import Graph
from qir.ir.opdef import get_op
from qir.ir.types import DType, TensorType


def infer_node(op, *types, attrs=None, num_outputs=None):
    """The output types of a node of ``op`` over fresh graph inputs of ``types``."""
    g = Graph("t")
    inputs = [g.add_input(f"x{i}", t) for i, t in enumerate(types)]
    node = g.add_node(op, inputs, attrs or {}, num_outputs=num_outputs)
    return [v.type for v in node.outputs]


def run_kernel(op, *arrays, **attrs):
    """``op``'s reference kernel on ``arrays``, with the schema's defaults for other attributes."""
    opdef = get_op(op)
    full = {k: v.default for k, v in opdef.attrs.items() if not v.required}
    full.update(attrs)
    return opdef.kernel(*arrays, **full)


def f32(*shape):
    return TensorType(DType.FLOAT32, shape)
