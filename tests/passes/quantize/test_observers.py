"""TensorStats and the range algorithms, checked against numpy, onnxruntime's entropy
calibrator, and the real quantization error of qir's own quantizer (params.fake_quantize)."""

from __future__ import annotations

import contextlib
import io

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from hypothesis.extra import numpy as hnp

from qir.errors import QirError
from qir.passes.quantize.observers import (StatsCollector, TensorStats, compute_range,
                                           kl_threshold_bin, weight_absmax)
from qir.passes.quantize.params import activation_params, fake_quantize, weight_params
from tests.passes.helpers import MAX_EXAMPLES

SETTINGS = settings(max_examples=MAX_EXAMPLES, deadline=None)
ALGORITHMS = ("minmax", "ma_minmax", "percentile", "mse", "entropy")

finite32 = st.floats(-1e6, 1e6, allow_nan=False, allow_infinity=False, width=32)


@st.composite
def batch_lists(draw, min_batches=1, max_batches=5):
    """Batches of float32 data whose scales differ, so that the histogram must grow."""
    out = []
    for _ in range(draw(st.integers(min_batches, max_batches))):
        data = draw(hnp.arrays(np.float32, st.integers(1, 200), elements=finite32))
        scale = draw(st.sampled_from([1e-4, 1.0, 37.0, 1e3]))
        out.append((data * np.float32(scale)).astype(np.float32))
    return out


def stats_of(batches, bins=2048) -> TensorStats:
    stats = TensorStats(bins=bins)
    for b in batches:
        stats.update(b)
    return stats


def quant_mse(x: np.ndarray, rng: tuple[float, float], bitwidth: int, symmetric: bool) -> float:
    """Mean squared error of x through qir's quantizer with the range's params."""
    qp = activation_params(rng[0], rng[1], bitwidth, False, symmetric)
    return float(np.mean((fake_quantize(x, qp).astype(np.float64) - x) ** 2))


# -- histogram ---------------------------------------------------------------------------------

@SETTINGS
@given(batch_lists(), st.sampled_from([16, 64, 2048]))
def test_histogram_merging_preserves_counts_and_extremes(batches, bins):
    stats = stats_of(batches, bins)
    data = np.concatenate(batches).astype(np.float64)
    assert stats.count == data.size == stats.hist.sum()
    assert stats.min == data.min() and stats.max == data.max()
    assert stats.batches == len(batches)
    assert stats.hist.size <= bins and (stats.hist >= 0).all()
    edges = stats.hist_edges()
    rounding = 1e-9 * np.abs(data).max()  # edges are products i*w, rounded
    assert edges[0] <= data.min() + rounding and data.max() <= edges[-1] + rounding
    # Merging is exact: the histogram is what binning all the data at the final width gives.
    direct = np.floor(data / stats.hist_width).astype(np.int64) - stats.hist_first
    np.testing.assert_array_equal(np.bincount(direct, minlength=stats.hist.size), stats.hist)
    # numpy's own binning agrees but for values within rounding of an edge.
    theirs, _ = np.histogram(data, bins=edges)
    near_edge = np.abs(data[:, None] - edges[None, :]).min(axis=1) <= 1e-9 * np.maximum(np.abs(data), 1e-30)
    assert np.abs(theirs - stats.hist).sum() <= 2 * near_edge.sum()


def test_histogram_grows_from_all_zeros_to_huge():
    stats = stats_of([np.zeros(10, np.float32), np.array([1e30, -3e29], np.float32),
                      np.array([1e-3], np.float32)])
    assert stats.count == 13 and stats.zeros == 10 and stats.hist.sum() == 13
    assert stats.hist.size <= stats.bins
    assert stats.min == np.float32(-3e29) and stats.max == np.float32(1e30)


@pytest.mark.parametrize("batches", [
    [np.float32(1000) + np.linspace(0, 1, 500, dtype=np.float32)],  # far from 0 for its spread
    [np.array([1.0, 1 + 2.2e-16, 1 + 4.4e-16])],                   # float64, spread of 2 ulps
    [np.array([5e-324]), np.array([1e300, -1e300])],                # subnormal, then huge
    [np.array([1.7e308, -1.7e308])],                                # near float64's limits
    [np.zeros(7, np.float32)],
], ids=["far", "ulps", "subnormal-huge", "limits", "zeros"])
def test_extreme_data_neither_crashes_nor_walks_millions_of_bins(batches):
    stats = stats_of(batches)
    data = np.concatenate(batches).astype(np.float64)
    assert stats.count == data.size == stats.hist.sum() and stats.hist.size <= stats.bins
    hist, _, _ = stats.zero_view()  # what the searches walk: bounded, 0 included
    assert hist.size <= stats.bins and hist.sum() == data.size
    for algorithm in ALGORITHMS:
        for symmetric in (False, True):
            lo, hi = compute_range(stats, algorithm, symmetric=symmetric)
            assert np.isfinite([lo, hi]).all() and lo <= hi, algorithm
            assert max(abs(lo), abs(hi)) <= np.abs(data).max()


def test_nonfinite_values_are_counted_and_left_out():
    stats = stats_of([np.array([1.0, np.nan, -2.0, np.inf], np.float32), np.array([-np.inf], np.float32)])
    assert (stats.count, stats.nonfinite, stats.min, stats.max) == (2, 3, -2.0, 1.0)
    assert stats.batches == 1  # the all-inf batch has no extremes to average
    nothing = stats_of([np.array([np.nan, np.inf], np.float32)])
    with pytest.raises(QirError, match="no finite values"):
        compute_range(nothing, "minmax")


@SETTINGS
@given(st.data())
def test_per_channel_stats_match_numpy(data):
    shape = data.draw(hnp.array_shapes(min_dims=1, max_dims=4, max_side=5))
    axis = data.draw(st.integers(-len(shape), len(shape) - 1))
    count = data.draw(st.integers(1, 3))
    batches = [data.draw(hnp.arrays(np.float32, shape, elements=finite32)) for _ in range(count)]
    collector = StatsCollector(axis=axis)
    for b in batches:
        collector.update("t", b)
    stats = collector.stats["t"]
    stacked = np.stack(batches).astype(np.float64)
    other = tuple(i for i in range(stacked.ndim) if i != (axis % len(shape)) + 1)
    np.testing.assert_array_equal(stats.channel_min, stacked.min(axis=other))
    np.testing.assert_array_equal(stats.channel_max, stacked.max(axis=other))
    np.testing.assert_allclose(stats.channel_sum, stacked.sum(axis=other), rtol=1e-9, atol=1e-6)


def test_per_channel_count_must_not_change():
    stats = TensorStats(name="act", axis=1)
    stats.update(np.zeros((1, 3, 2), np.float32))
    with pytest.raises(QirError, match="act: 4 channels"):
        stats.update(np.zeros((1, 4, 2), np.float32))


# -- algorithms --------------------------------------------------------------------------------

@SETTINGS
@given(batch_lists())
def test_minmax_equals_numpy(batches):
    stats = stats_of(batches)
    data = np.concatenate(batches)
    assert compute_range(stats, "minmax") == (float(data.min()), float(data.max()))
    t = float(np.abs(data).max())
    assert compute_range(stats, "minmax", symmetric=True) == (-t, t)


@SETTINGS
@given(batch_lists(), st.floats(0.5, 1.0))
def test_ma_minmax_is_the_moving_average_of_batch_extremes(batches, momentum):
    stats = stats_of(batches)
    lo, hi = float(batches[0].min()), float(batches[0].max())
    for b in batches[1:]:
        lo = momentum * lo + (1 - momentum) * float(b.min())
        hi = momentum * hi + (1 - momentum) * float(b.max())
    if momentum == 1.0:
        with pytest.raises(QirError, match="momentum"):
            compute_range(stats, "ma_minmax", momentum=momentum)
        return
    got = compute_range(stats, "ma_minmax", momentum=momentum)
    np.testing.assert_allclose(got, (lo, hi), rtol=1e-12, atol=1e-300)


@SETTINGS
@given(batch_lists(), st.floats(50.0, 100.0))
def test_percentile_agrees_with_numpy_within_one_bin(batches, percentile):
    stats = stats_of(batches)
    data = np.concatenate(batches).astype(np.float64)
    slack = stats.hist_width * (1 + 1e-9) + 1e-12 * np.abs(data).max()
    lo, hi = compute_range(stats, "percentile", percentile=percentile)
    assert abs(hi - np.percentile(data, percentile)) <= slack
    assert abs(lo - np.percentile(data, 100 - percentile)) <= slack
    _, t = compute_range(stats, "percentile", percentile=percentile, symmetric=True)
    assert abs(t - np.percentile(np.abs(data), percentile)) <= slack


@SETTINGS
@given(batch_lists(), st.sampled_from(ALGORITHMS), st.sampled_from([4, 8, 16]), st.booleans())
def test_every_range_lies_within_the_data(batches, algorithm, bitwidth, symmetric):
    stats = stats_of(batches)
    data = np.concatenate(batches).astype(np.float64)
    lo, hi = compute_range(stats, algorithm, bitwidth=bitwidth, symmetric=symmetric)
    absmax = np.abs(data).max()
    assert lo <= hi
    assert max(abs(lo), abs(hi)) <= absmax  # e.g. the entropy range lies in [0, max|x|]
    if symmetric:
        assert lo == -hi and hi >= 0
    else:
        assert data.min() <= lo and hi <= data.max()


def _distribution(kind: str, rng: np.random.Generator, n: int) -> np.ndarray:
    return {"normal": lambda: rng.standard_normal(n), "laplace": lambda: rng.laplace(size=n),
            "t2": lambda: rng.standard_t(2, size=n), "t3": lambda: rng.standard_t(3, size=n),
            "uniform": lambda: rng.uniform(-1, 1, n),
            "lognormal": lambda: rng.lognormal(size=n), "relu": lambda: np.maximum(rng.standard_normal(n), 0),
            "integers": lambda: rng.integers(-3, 4, n).astype(float)}[kind]()


@pytest.mark.parametrize("bitwidth", [4, 8])
@pytest.mark.parametrize("symmetric", [False, True])
@pytest.mark.parametrize("kind", ["t3", "lognormal"])
def test_mse_beats_minmax_on_heavy_tails(kind, symmetric, bitwidth):
    """Clipping the rare tail values buys finer steps for the bulk: a clear gain at 4 bits,
    a smaller one at 8 (measured: 0.15-0.27x at 4 bits, 0.78-0.94x at 8)."""
    rng = np.random.default_rng(7)
    data = _distribution(kind, rng, 50_000).astype(np.float32)
    stats = stats_of(np.array_split(data, 5))
    chosen = compute_range(stats, "mse", bitwidth=bitwidth, symmetric=symmetric)
    best = quant_mse(data, chosen, bitwidth, symmetric)
    plain = quant_mse(data, compute_range(stats, "minmax", symmetric=symmetric), bitwidth, symmetric)
    assert best < {4: 0.5, 8: 0.97}[bitwidth] * plain


@SETTINGS
@given(st.integers(0, 2**32 - 1),
       st.sampled_from(["normal", "laplace", "t2", "uniform", "lognormal", "relu", "integers"]),
       st.integers(1, 3000), st.floats(1e-3, 1e3), st.floats(-3, 3), st.sampled_from([4, 8, 16]), st.booleans())
def test_mse_is_never_worse_than_minmax_beyond_bin_error(seed, kind, n, scale, shift, bitwidth, symmetric):
    rng = np.random.default_rng(seed)
    data = ((_distribution(kind, rng, n) + shift) * scale).astype(np.float32)
    stats = stats_of(np.array_split(data, 3) if n >= 3 else [data])
    chosen = compute_range(stats, "mse", bitwidth=bitwidth, symmetric=symmetric)
    best = quant_mse(data, chosen, bitwidth, symmetric)
    plain = quant_mse(data, compute_range(stats, "minmax", symmetric=symmetric), bitwidth, symmetric)
    # The search models values as spread evenly inside their bin; that model is off by at
    # most about a bin width per value, so the pick may lose to minmax by that much at most.
    # Discrete data ("integers") can sit exactly on min-max's grid, which no model of values
    # spread inside bins predicts: there the loss is bounded by the rounding noise step²/12.
    step = (stats.max - min(stats.min, 0.0)) / (2 ** bitwidth - 1)
    slack = max(stats.hist_width ** 2, step ** 2 / 12 if kind == "integers" else 0.0)
    assert best <= plain + slack + 1e-12 * plain


def _ort_entropy(data: np.ndarray, quantized_bins: int) -> tuple[float, float]:
    from onnxruntime.quantization.calibrate import HistogramCollector

    collector = HistogramCollector("entropy", False, 2048, quantized_bins, None, None)
    with contextlib.redirect_stdout(io.StringIO()):  # it prints progress
        collector.collect({"t": data})
        lo, hi, *_ = collector.compute_collection_result()["t"]
    return float(lo), float(hi)


@pytest.mark.parametrize("seed,kind", [(0, "normal"), (1, "laplace"), (2, "normal"), (3, "laplace")])
def test_entropy_agrees_with_onnxruntime(seed, kind):
    """TensorRT-style KL calibration vs onnxruntime's EntropyCalibrater on the same data.

    onnxruntime windows a 2048-bin histogram of x symmetrically about 0 and quantizes the
    window into N bins; with N = 256 that is int8's 128 levels per side, what qir's 8-bit
    symmetric entropy search uses on |x|. The two differ in smoothing, window alignment and how
    leftover bins merge, and the KL minimum is flat, so thresholds agree to 10% of max|x|
    (measured: within 7% on these cases)."""
    rng = np.random.default_rng(seed)
    data = _distribution(kind, rng, 200_000).astype(np.float32)
    stats = stats_of([data])
    _, ours = compute_range(stats, "entropy", bitwidth=8, symmetric=True)
    lo, hi = _ort_entropy(data, 256)
    assert abs(ours - hi) <= 0.10 * stats.absmax
    assert abs(ours + lo) <= 0.10 * stats.absmax
    assert ours < 0.95 * stats.absmax  # it does clip the tails of these distributions


def test_entropy_threshold_keeps_everything_when_levels_suffice():
    hist = np.array([5, 0, 3, 1], np.int64)
    assert kl_threshold_bin(hist, 8) == 4
    stats = stats_of([np.random.default_rng(0).standard_normal(1000).astype(np.float32)])
    # 16 bits: 32768 levels > 2048 bins, nothing to gain from clipping.
    assert compute_range(stats, "entropy", bitwidth=16) == compute_range(stats, "minmax")


def test_unknown_algorithm_and_bad_options():
    stats = stats_of([np.arange(10, dtype=np.float32)])
    with pytest.raises(QirError, match="unknown calibration algorithm 'kl'"):
        compute_range(stats, "kl")
    with pytest.raises(QirError, match="percentile"):
        compute_range(stats, "percentile", percentile=0)


def test_stats_round_trip_through_their_state():
    rng = np.random.default_rng(3)
    stats = TensorStats(name="x", axis=0)
    for _ in range(3):
        stats.update(rng.standard_t(3, size=(4, 50)).astype(np.float32))
    again = TensorStats.from_state(*stats.to_state())
    for algorithm in ALGORITHMS:
        assert compute_range(again, algorithm) == compute_range(stats, algorithm)
    np.testing.assert_array_equal(again.channel_max, stats.channel_max)
    scalars, arrays = stats.to_state()
    with pytest.raises(QirError):
        TensorStats.from_state({**scalars, "count": scalars["count"] + 1}, arrays)


# -- weights -----------------------------------------------------------------------------------

@SETTINGS
@given(hnp.arrays(np.float32, hnp.array_shapes(min_dims=1, max_dims=4, max_side=6), elements=finite32),
       st.data(), st.sampled_from([4, 8]))
def test_weight_absmax(w, data, bitwidth):
    axis = data.draw(st.one_of(st.none(), st.integers(0, w.ndim - 1)))
    w64 = w.astype(np.float64)
    plain = weight_absmax(w, axis, bitwidth)
    if axis is None:
        assert plain.shape == () and plain == np.abs(w64).max()
    else:
        other = tuple(i for i in range(w.ndim) if i != axis)
        np.testing.assert_array_equal(plain, np.abs(w64).max(axis=other) if other else np.abs(w64))
    best = weight_absmax(w, axis, bitwidth, "mse")
    assert best.shape == plain.shape and (best <= plain).all() and (best >= 0).all()

    def errors(absmax):
        qp = weight_params(w64, axis, bitwidth, absmax=absmax)
        err = (fake_quantize(w64, qp, narrow=True) - w64) ** 2
        return err.sum() if axis is None else err.sum(axis=tuple(i for i in range(w.ndim) if i != axis))

    assert (errors(best) <= errors(plain) * (1 + 1e-9) + 1e-300).all()


def test_weight_mse_clips_heavy_tailed_weights():
    w = np.random.default_rng(5).laplace(size=(8, 16, 3, 3)).astype(np.float32)
    best, plain = weight_absmax(w, 0, 4, "mse"), weight_absmax(w, 0, 4)
    assert (best < plain).all()

    def err(absmax):
        diff = fake_quantize(w, weight_params(w, 0, 4, absmax=absmax), narrow=True) - w
        return np.square(diff.astype(np.float64)).sum(axis=(1, 2, 3))

    assert err(best).sum() < 0.95 * err(plain).sum()  # measured: 0.89
    # A brute-force scan of 400 clips per channel finds nothing more than 1% better.
    scan = np.min([err(plain * f) for f in np.linspace(0.05, 1.0, 400)], axis=0)
    assert (err(best) <= scan * 1.01).all()
    with pytest.raises(QirError, match="weight range algorithm"):
        weight_absmax(w, 0, 8, "entropy")
