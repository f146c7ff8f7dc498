"""Float ↔ integer tensors under QuantParams (real = scale × (q − zero_point)).

Float → integer rounds half to even, then saturates (ONNX QuantizeLinear's rule; DESIGN.md).
The runtime uses these at a quantized model's inputs and outputs; quantization passes use them
for weights, bias and lookup tables.
"""

from __future__ import annotations

import numpy as np

from qir.errors import QirError
from qir.ir.types import DType, QuantParams

_INT_DTYPES = {(8, False): DType.UINT8, (8, True): DType.INT8, (16, False): DType.UINT16,
               (16, True): DType.INT16, (32, True): DType.INT32, (4, True): DType.INT4,
               (4, False): DType.UINT4}


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
