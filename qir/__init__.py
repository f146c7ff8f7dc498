"""qir: an open compiler for neural networks on edge SoCs.

    import qir
    g = qir.load_onnx("m.onnx")
    m = qir.compile("m.onnx", target="reference")
    outs = m.run({"input": x})
"""

from qir.api import compile, load_onnx
from qir.errors import QirError
from qir.ir.graph import Graph, Node, Value
from qir.ir.types import DType, QuantParams, TensorType

from qir.version import __version__

__all__ = ["compile", "load_onnx", "Graph", "Node", "Value", "DType", "QuantParams", "TensorType",
           "QirError", "__version__"]
