"""Quantization (DESIGN.md, Quantization): calibration, QuantParams, integer lowering,
encodings in and out, PTQ algorithms and the accuracy debugger.

    from qir.passes.quantize import Config, quantize
    result = quantize(optimized_graph, Config.preset("int8"), calibration=[{"input": x}, ...])
    result.graph          # integer-only qint graph; result.float_ops: what stayed float
"""

from qir.passes.quantize import equalize, qdq  # noqa: F401  (register equalize-cross-layer, fold-qdq)
from qir.passes.quantize.calibrate import CalibrationTable, calibrate
from qir.passes.quantize.config import Config
from qir.passes.quantize.debugger import AccuracyReport, auto_mixed_precision, compare
from qir.passes.quantize.dataset import load_calibration_set
from qir.passes.quantize.encodings import Encodings, dump_encodings, load_encodings
from qir.passes.quantize.qdq import export_qdq_onnx, fold_qdq, to_qdq
from qir.passes.quantize.pipeline import Calibrated, QuantizeResult, calibrate_graph, quantize

__all__ = ["Config", "quantize", "calibrate", "calibrate_graph", "Calibrated", "QuantizeResult",
           "CalibrationTable", "load_calibration_set", "Encodings", "load_encodings",
           "dump_encodings", "compare", "AccuracyReport", "auto_mixed_precision", "fold_qdq", "to_qdq",
           "export_qdq_onnx"]
