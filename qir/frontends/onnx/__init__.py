"""The ONNX frontend: import ModelProtos as qir Graphs and export Graphs back to ONNX."""

from qir.frontends.onnx.importer import load_onnx, read_model

__all__ = ["load_onnx", "read_model"]
