"""The typed graph IR: types, values, nodes, graphs, the op registry, verifier and text form."""

from qir.ir.graph import Graph, Node, Use, Value
from qir.ir.types import DType, OptionalType, QuantParams, SequenceType, TensorType

__all__ = ["Graph", "Node", "Use", "Value", "DType", "OptionalType", "QuantParams", "SequenceType", "TensorType"]
