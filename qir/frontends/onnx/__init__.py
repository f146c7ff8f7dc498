"""The ONNX frontend: import ModelProtos as qir Graphs and export Graphs back to ONNX."""

from qir.frontends.onnx.exporter import export_onnx
from qir.frontends.onnx.importer import load_onnx, read_model

__all__ = ["export_onnx", "load_onnx", "read_model"]
