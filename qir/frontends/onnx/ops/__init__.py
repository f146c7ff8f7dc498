"""ONNX → qir converters, one module per qir op family (core: Constant)."""

from qir.frontends.onnx.ops import (  # noqa: F401  (each module registers its converters)
    control, core, elementwise, linalg, loss, misc, nn, quant, reduce, tensor, training,
)
