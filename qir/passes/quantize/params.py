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
from qir.ir.types import DType, QuantParams

_INT_DTYPES = {(8, False): DType.UINT8, (8, True): DType.INT8, (16, False): DType.UINT16,
               (16, True): DType.INT16, (32, True): DType.INT32, (4, True): DType.INT4,
               (4, False): DType.UINT4}

#: The smallest scale a range may get: keeps constant (all-zero) tensors representable.
MIN_SCALE = 1e-8


def qdtype(bitwidth: int, signed: bool) -> DType:
    """The integer storage type of a ``bitwidth``-bit quantized tensor."""
    try:
        return _INT_DTYPES[(bitwidth, signed)]
    except KeyError:
        raise QirError(f"no {'signed' if signed else 'unsigned'} {bitwidth}-bit integer type; "
                       "use 4, 8 or 16 bits (32 for bias)") from None


def qrange(qp: QuantParams) -> tuple[int, int]:
    """The integer range of ``qp``'s storage type."""
    if qp.signed:
        return -(1 << (qp.bitwidth - 1)), (1 << (qp.bitwidth - 1)) - 1
    return 0, (1 << qp.bitwidth) - 1


def activation_params(lo: float, hi: float, bitwidth: int = 8, signed: bool = False,
                      symmetric: bool = False) -> QuantParams:
    """Per-tensor params covering [lo, hi] (widened to contain 0)."""
    lo, hi = min(float(lo), 0.0), max(float(hi), 0.0)
    if not (np.isfinite(lo) and np.isfinite(hi)):
        raise QirError(f"range [{lo}, {hi}] is not finite; calibrate on data without inf/NaN")
    if symmetric:
        qmax = (1 << (bitwidth - 1)) - 1
        scale = max(max(-lo, hi) / qmax, MIN_SCALE)
        return QuantParams(scale, 0 if signed else 1 << (bitwidth - 1), bitwidth, signed)
    qmin, qmax = (-(1 << (bitwidth - 1)), (1 << (bitwidth - 1)) - 1) if signed else (0, (1 << bitwidth) - 1)
    scale = max((hi - lo) / (qmax - qmin), MIN_SCALE)
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
    scale = np.maximum(np.asarray(absmax, dtype=np.float64) / qmax, MIN_SCALE)
    return QuantParams(scale, np.zeros(scale.size, dtype=np.int64), bitwidth, True, axis)


def bias_params(input_scale: float, weight: QuantParams) -> QuantParams:
    """int32 params of a 1-D bias added to the accumulator of x (scale ``input_scale``) × w:
    per channel (axis 0 of the bias) when the weights are."""
    scale = np.asarray(weight.scale, dtype=np.float64) * float(input_scale)
    return QuantParams(scale, np.zeros(scale.size, dtype=np.int64), 32, True,
                       None if weight.axis is None else 0)


def _broadcast(values, qp: QuantParams, shape) -> np.ndarray:
    values = np.asarray(values)
    if qp.axis is None or values.size == 1:
        return values.reshape(())
    dims = [1] * len(shape)
    dims[qp.axis] = values.size
    return values.reshape(dims)


def quantize_array(x: np.ndarray, qp: QuantParams, narrow: bool = False) -> np.ndarray:
    """round_half_even(x / scale) + zero_point, saturated, in the integer storage type.

    ``narrow`` keeps signed values in ±(2^(b−1) − 1), the symmetric range of weights.
    """
    x = np.asarray(x, dtype=np.float64)
    scale = _broadcast(qp.scale, qp, x.shape)
    zero_point = _broadcast(qp.zero_point, qp, x.shape)
    lo, hi = qrange(qp)
    if narrow and qp.signed:
        lo = -hi
    q = np.clip(np.rint(x / scale) + zero_point, lo, hi)
    return q.astype(qdtype(qp.bitwidth, qp.signed).numpy)


def dequantize_array(q: np.ndarray, qp: QuantParams) -> np.ndarray:
    """(q − zero_point) × scale, in float32."""
    q = np.asarray(q)
    scale = _broadcast(qp.scale, qp, q.shape)
    zero_point = _broadcast(qp.zero_point, qp, q.shape)
    return ((q.astype(np.float64) - zero_point) * scale).astype(np.float32)


def fake_quantize(x: np.ndarray, qp: QuantParams, narrow: bool = False) -> np.ndarray:
    """``x`` quantized and dequantized again: what the integer model sees of it."""
    return dequantize_array(quantize_array(x, qp, narrow), qp).astype(np.asarray(x).dtype)
