"""qir: an open compiler for neural networks on edge SoCs.

    import qir
    g = qir.load_onnx("m.onnx")
    m = qir.compile("m.onnx", target="reference")          # or quantize="int8", calibration=[...]
    outs = m.run({"input": x})
    m.save("out/"); m2 = qir.load("out/")
"""

from qir.api import compile, load, load_onnx, load_tensorflow, load_tflite, load_torch
from qir.errors import QirError
from qir.ir.graph import Graph, Node, Value
from qir.ir.types import DType, QuantParams, TensorType

from qir.version import __version__

__all__ = ["compile", "load", "load_onnx", "load_torch", "load_tensorflow", "load_tflite", "Graph", "Node",
           "Value", "DType", "QuantParams", "TensorType", "QirError", "quant", "passes",
           "__version__"]


def __getattr__(name: str):
    """``qir.quant`` and ``qir.passes`` load when first used (``import qir`` stays light)."""
    if name in ("quant", "passes"):
        import importlib

        return importlib.import_module(f"qir.{name}")
    raise AttributeError(f"module 'qir' has no attribute {name!r}")
