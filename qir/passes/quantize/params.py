"""From ranges to QuantParams: the one place that decides scales and zero points.

- Activations: asymmetric (unsigned by default) over a range widened to contain 0, with the
  zero point nudged to an integer so that real 0 is exact (zero padding, ReLU).
- Weights: symmetric, zero point 0, the restricted range ±(2^(b−1) − 1) (so −q never
  overflows and AVX2's u8×s8 pair sums have headroom), per output channel or per tensor.
- Bias: int32 at scale s_in × s_w (per channel when the weights are), zero point 0.

Float → integer rounds half to even (as ONNX QuantizeLinear does; DESIGN.md).
"""

from __future__ import annotations

import numpy as np

from qir.errors import QirError
from qir.ir.qtensor import dequantize_array, qdtype, qrange, quantize_array
from qir.ir.types import QuantParams

__all__ = ["activation_params", "weight_params", "bias_params", "fake_quantize", "qdtype",
           "qrange", "quantize_array", "dequantize_array", "MIN_SCALE"]

#: The smallest scale a range may get: keeps constant (all-zero) tensors representable.
MIN_SCALE = 1e-8


def _f32(scale):
    """Scales are float32 numbers (as QNN, TFLite and ONNX store them), so params survive any
    file format exactly."""
    return np.asarray(scale, dtype=np.float32).astype(np.float64)


def activation_params(lo: float, hi: float, bitwidth: int = 8, signed: bool = False,
                      symmetric: bool = False) -> QuantParams:
    """Per-tensor params covering [lo, hi] (widened to contain 0)."""
    lo, hi = min(float(lo), 0.0), max(float(hi), 0.0)
    if not (np.isfinite(lo) and np.isfinite(hi)):
        raise QirError(f"range [{lo}, {hi}] is not finite; calibrate on data without inf/NaN")
    if symmetric:
        qmax = (1 << (bitwidth - 1)) - 1
        scale = _f32(max(-lo, hi) / qmax if hi > lo else 1.0)
        return QuantParams(scale, 0 if signed else 1 << (bitwidth - 1), bitwidth, signed)
    qmin, qmax = (-(1 << (bitwidth - 1)), (1 << (bitwidth - 1)) - 1) if signed else (0, (1 << bitwidth) - 1)
    # An all-zero tensor (a dead channel group, an unused branch) gets scale 1: any scale
    # represents 0 exactly, and a tiny one would overflow the int32 bias of the next layer.
    scale = float(_f32(max((hi - lo) / (qmax - qmin), MIN_SCALE) if hi > lo else 1.0))
    zero_point = int(np.clip(np.rint(qmin - lo / scale), qmin, qmax))
    return QuantParams(scale, zero_point, bitwidth, signed)


def weight_params(w: np.ndarray, axis: int | None = 0, bitwidth: int = 8,
                  absmax: np.ndarray | float | None = None) -> QuantParams:
    """Symmetric params for weights ``w``, per channel along ``axis`` (None: per tensor).

    ``absmax`` (one per channel, or a scalar) replaces the data's own max |w| when given, e.g.
    from an MSE search or an encodings file.
    """
    w = np.asarray(w, dtype=np.float64)
    qmax = (1 << (bitwidth - 1)) - 1
    if absmax is None:
        if axis is None:
            absmax = np.abs(w).max(initial=0.0)
        else:
            absmax = np.abs(np.moveaxis(w, axis, 0).reshape(w.shape[axis], -1)).max(axis=1, initial=0.0)
    scale = _f32(np.maximum(np.asarray(absmax, dtype=np.float64) / qmax, MIN_SCALE))
    return QuantParams(scale, np.zeros(scale.size, dtype=np.int64), bitwidth, True, axis)


def bias_params(input_scale: float, weight: QuantParams) -> QuantParams:
    """int32 params of a 1-D bias added to the accumulator of x (scale ``input_scale``) × w:
    per channel (axis 0 of the bias) when the weights are."""
    scale = _f32(np.asarray(weight.scale, dtype=np.float64) * float(input_scale))
    return QuantParams(scale, np.zeros(scale.size, dtype=np.int64), 32, True,
                       None if weight.axis is None else 0)


def fake_quantize(x: np.ndarray, qp: QuantParams, narrow: bool = False) -> np.ndarray:
    """``x`` quantized and dequantized again: what the integer model sees of it."""
    return dequantize_array(quantize_array(x, qp, narrow), qp).astype(np.asarray(x).dtype)
