"""Converters that produce no qir node: Constant becomes a constant Value."""

from __future__ import annotations

import numpy as np

from qir.frontends.onnx.registry import converter

_VALUE_ATTRS = {
    "value": None, "value_float": np.float32, "value_floats": np.float32, "value_int": np.int64,
    "value_ints": np.int64, "value_string": object, "value_strings": object,
}


@converter("Constant")
def constant(ctx):
    for key, dtype in _VALUE_ATTRS.items():
        if key in ctx.attrs:
            array = np.array(ctx.attrs[key], dtype=dtype) if dtype is not None else ctx.attrs[key]
            return [ctx.graph.add_constant(array, ctx.node.output[0])]  # (add_constant makes it unique)
    raise ctx.fail("Constant has no value attribute (sparse_value is not supported)")
