"""Requantization arithmetic (qir.ir.fixedpoint) against an independent Python big-integer model
of the rule written in docs/quantization.md, over the full accumulator ranges, and against the
exact real product within the rounding the rule allows."""

from fractions import Fraction

import numpy as np
from hypothesis import given, settings, strategies as st

from qir.ir.fixedpoint import (multiply_by_quantized_multiplier, quantize_multiplier,
                               quantize_multipliers, requantize)
from tests.fixedpoint_model import big_int_rule


reals = st.floats(min_value=2.0 ** -70, max_value=2.0 ** 20, allow_nan=False, allow_infinity=False)


@given(reals)
@settings(max_examples=500)
def test_multiplier_is_normalized_and_close(real):
    m, shift = quantize_multiplier(real)
    assert -31 <= shift <= 62
    if shift < 62:
        assert 2 ** 30 <= m < 2 ** 31
    approx = Fraction(m) / 2 ** (31 + shift)
    # Half an ulp of a 31-bit mantissa (or of the fixed 2^-93 step when M is denormal).
    assert abs(approx - Fraction(real)) <= Fraction(1, 2 ** (32 + shift)) + Fraction(real) * Fraction(1, 2 ** 30)


@given(st.integers(-2 ** 31, 2 ** 31 - 1), st.floats(2.0 ** -40, 0.999, allow_nan=False))
@settings(max_examples=2000)
def test_int32_accumulators_match_big_int_rule(acc, real):
    m, shift = quantize_multiplier(real)
    got = int(multiply_by_quantized_multiplier(np.int64(acc), m, shift))
    assert got == big_int_rule(acc, m, shift)


@given(st.integers(-2 ** 46, 2 ** 46), st.floats(2.0 ** -60, 2.0 ** -10, allow_nan=False))
@settings(max_examples=2000)
def test_wide_accumulators_match_big_int_rule(acc, real):
    """16-bit activations accumulate past 32 bits; the split multiply must stay exact."""
    m, shift = quantize_multiplier(real)
    got = int(multiply_by_quantized_multiplier(np.int64(acc), m, shift))
    assert got == big_int_rule(acc, m, shift)


@given(st.integers(-2 ** 15, 2 ** 15), st.floats(1.0, 2.0 ** 14, allow_nan=False))
@settings(max_examples=500)
def test_factors_above_one_shift_left_first(acc, real):
    m, shift = quantize_multiplier(real)
    assert shift <= 0
    assert int(multiply_by_quantized_multiplier(np.int64(acc), m, shift)) == big_int_rule(acc, m, shift)


@given(st.integers(-2 ** 31, 2 ** 31 - 1), st.floats(2.0 ** -30, 0.999, allow_nan=False))
@settings(max_examples=1000)
def test_result_is_within_one_of_the_exact_product(acc, real):
    """Two roundings of half a step each, plus the multiplier's own error: never more than 1 off
    round-half-up of the exact real product (in float64/Fraction)."""
    m, shift = quantize_multiplier(real)
    exact = Fraction(acc) * Fraction(real)
    got = int(multiply_by_quantized_multiplier(np.int64(acc), m, shift))
    assert abs(Fraction(got) - exact) <= 1


def test_ties_round_up_toward_plus_infinity():
    m, shift = quantize_multiplier(0.5)
    got = multiply_by_quantized_multiplier(np.array([-3, -1, 1, 3], dtype=np.int64), m, shift)
    assert got.tolist() == [-1, 0, 1, 2]  # -1.5 -> -1, -0.5 -> 0, 0.5 -> 1, 1.5 -> 2


def test_vectorized_per_channel_and_clamp():
    ms, shifts = quantize_multipliers([0.25, 0.01, 0.7])
    acc = np.array([[1000, -1000, 37], [5, 6, -7]], dtype=np.int64)
    got = requantize(acc, ms, shifts, zero_point=10, qmin=0, qmax=255)
    want = [[min(255, max(0, 10 + big_int_rule(int(a), int(m), int(s))))
             for a, m, s in zip(row, ms, shifts)] for row in acc]
    assert got.tolist() == want


def test_zero_factor():
    assert quantize_multiplier(0.0) == (0, 0)
    assert int(multiply_by_quantized_multiplier(np.int64(12345), 0, 0)) == 0
