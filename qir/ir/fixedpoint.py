"""Integer-only requantization: the arithmetic every target reproduces bit for bit.

A real factor ``r > 0`` (e.g. s_in·s_w / s_out) is represented as an int32 multiplier ``M`` and a
``shift``: r ≈ M · 2^(−31) · 2^(−shift), with M in [2^30, 2^31) (fewer bits only for factors
below 2^(−62)). An exact integer accumulator ``a`` maps to

    t = (a · 2^max(−shift, 0) · M + 2^30) >> 31          "rounding doubling high multiply"
    y = (t + 2^(shift − 1)) >> shift   when shift > 0     "rounding shift right"

where ``>>`` is the arithmetic (flooring) shift. Both steps round half up (toward +∞), the
rounding HVX (``vmpye/vmpyo :<<1:rnd:sat``, ``vasr :rnd:sat``) and NEON (``sqrdmulh``,
``srshl``) do natively. ``requantize`` then adds the output zero point and clamps. Python
integers in the docs, numpy int64 here: the high multiply is split so that ``a · M`` never
overflows for |a| < 2^47 (16-bit activations need more than 32 accumulator bits).
See docs/quantization.md.
"""

from __future__ import annotations

import math

import numpy as np

from qir.errors import QirError

MAX_SHIFT = 62
_LOW_BITS = 24


def quantize_multiplier(real: float) -> tuple[int, int]:
    """(M, shift) with real ≈ M · 2^(−31 − shift): M in [2^30, 2^31), shift in [−31, 62].

    Exact: the mantissa comes from ``math.frexp`` (no floating-point logarithms), rounded half
    to even like every float → int conversion in qir.
    """
    real = float(real)
    if not math.isfinite(real) or real < 0:
        raise QirError(f"requantization factor {real} must be finite and non-negative")
    if real == 0.0:
        return 0, 0
    mantissa, exponent = math.frexp(real)  # real = mantissa · 2^exponent, mantissa in [0.5, 1)
    multiplier = round(mantissa * (1 << 31))
    if multiplier == 1 << 31:
        multiplier //= 2
        exponent += 1
    shift = -exponent
    if shift < -31:
        raise QirError(f"requantization factor {real} is too large (over 2^31)")
    if shift > MAX_SHIFT:
        # Below 2^(−62): keep shift at its maximum and let M lose bits.
        multiplier = round(real * 2.0 ** (31 + MAX_SHIFT))
        shift = MAX_SHIFT
    return int(multiplier), int(shift)


def quantize_multipliers(reals) -> tuple[np.ndarray, np.ndarray]:
    """``quantize_multiplier`` of each factor: (int32 multipliers, int32 shifts)."""
    pairs = [quantize_multiplier(r) for r in np.atleast_1d(np.asarray(reals, dtype=np.float64)).ravel()]
    return (np.array([m for m, _ in pairs], dtype=np.int32),
            np.array([s for _, s in pairs], dtype=np.int32))


def _high_mul(a: np.ndarray, multiplier: np.ndarray) -> np.ndarray:
    """(a · M + 2^30) >> 31, exact in int64 for |a| < 2^47 and 0 ≤ M < 2^31."""
    high = a >> _LOW_BITS
    low = a & ((1 << _LOW_BITS) - 1)
    # a·M + 2^30 = high·M·2^24 + (low·M + 2^30); floor-divide both parts by 2^24 first.
    partial = high * multiplier + ((low * multiplier + (1 << 30)) >> _LOW_BITS)
    return partial >> (31 - _LOW_BITS)


def multiply_by_quantized_multiplier(acc, multiplier, shift) -> np.ndarray:
    """The requantized values of ``acc`` (int64), before the zero point: see the module doc.

    ``multiplier`` and ``shift`` broadcast against ``acc`` (per-channel factors are reshaped
    by the caller).
    """
    a = np.asarray(acc, dtype=np.int64)
    multiplier = np.asarray(multiplier, dtype=np.int64)
    shift = np.asarray(shift, dtype=np.int64)
    left = np.maximum(-shift, 0)
    right = np.maximum(shift, 0)
    a = a << left
    t = _high_mul(a, multiplier)
    # Rounding shift right; right == 0 adds nothing.
    rounding = np.where(right > 0, np.int64(1) << np.maximum(right - 1, 0), 0)
    return (t + rounding) >> right


def requantize(acc, multiplier, shift, zero_point: int, qmin: int, qmax: int) -> np.ndarray:
    """clamp(zero_point + multiply_by_quantized_multiplier(acc, M, shift), qmin, qmax), int64."""
    y = multiply_by_quantized_multiplier(acc, multiplier, shift) + np.int64(zero_point)
    return np.clip(y, qmin, qmax)


def channel_params(values, ndim: int, axis: int) -> np.ndarray:
    """Per-channel ``values`` reshaped to broadcast along ``axis`` of an ``ndim``-d tensor."""
    values = np.asarray(values)
    if values.size == 1:
        return values.reshape(())
    dims = [1] * ndim
    dims[axis] = values.size
    return values.reshape(dims)
