"""Quantization (DESIGN.md, Quantization): calibration, QuantParams, integer lowering,
encodings in and out, PTQ algorithms and the accuracy debugger."""

from qir.passes.quantize.config import Config

__all__ = ["Config"]
