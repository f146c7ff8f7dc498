"""What a tensor looked like over the calibration set, and the ranges the algorithms draw from it.

A :class:`TensorStats` keeps everything every range algorithm needs (count, min/max, per-batch
min/max, sums, a histogram, optional per-channel min/max), so that switching the algorithm
(``compute_range(stats, "entropy")`` after ``"minmax"``) never needs the model run again.

The histogram lives on a grid anchored at 0: bin ``i`` holds values in ``[i*w, (i+1)*w)``. When
new data falls outside the ``bins`` bins it may hold, the width doubles (``w -> 2^k w``) and old
bin ``i`` merges into bin ``i >> k``, the way TensorRT's and onnxruntime's calibrators re-bin:
merging is exact (each new edge is an old edge), counts are never split, and because 0 is always
an edge the |x| histogram that symmetric algorithms need is a plain fold at 0. The searches work
on ``zero_view()``, the histogram merged until it spans 0 too within ``bins`` bins.

Algorithms (``compute_range``):

- ``minmax``: the data's min and max.
- ``ma_minmax``: exponential moving average of the per-batch min and max
  (``r = momentum*r + (1-momentum)*batch``), as TF's MovingAverageQuantize and onnxruntime's
  ``moving_average`` do.
- ``percentile``: ``[P(100-p), P(p)]`` (symmetric: ``P(p)`` of |x|), from the histogram.
- ``mse``: the range minimizing the expected squared error of quantizing to ``bitwidth`` bits
  the way ``params.activation_params`` does (zero point nudged onto the grid): clipping error of
  the tails plus rounding error inside, both integrated exactly over the histogram's bins
  (values spread evenly in a bin); a coarse-to-fine search over bin edges.
- ``entropy``: TensorRT's KL-divergence calibration on the |x| histogram (pytorch-quantization's
  ``_compute_amax_entropy``), with ``2^(b-1)`` quantized bins (``2^b`` for one-signed data
  quantized asymmetrically).
"""

from __future__ import annotations

import math
from typing import Any, Callable

import attrs
import numpy as np

from qir.errors import QirError

#: Histogram bins a tensor's stats hold at most (TensorRT and onnxruntime use 2048 too).
DEFAULT_BINS = 2048

#: Version of the serialized form of TensorStats (``to_state``/``from_state``).
STATE_VERSION = 1


def _f64_array(value) -> np.ndarray:
    return np.asarray(value, dtype=np.float64)


def _opt_f64_array(value):
    return None if value is None else np.asarray(value, dtype=np.float64)


@attrs.define(eq=False)
class TensorStats:
    """Statistics of one tensor over the calibration set (finite values only).

    ``count`` finite values were seen over ``len(batch_min)`` batches (a batch: one run of the
    model); ``nonfinite`` counts inf/NaN values left out, ``zeros`` the values exactly 0 (they
    quantize exactly in any range, so the MSE and KL searches leave them out). ``hist[j]``
    counts values in ``[(hist_first+j)*hist_width, (hist_first+j+1)*hist_width)``.
    ``channel_min``/``channel_max``/``channel_sum`` are per index along ``axis`` when an axis
    was asked for.
    """

    name: str = ""
    bins: int = DEFAULT_BINS
    axis: int | None = None
    count: int = 0
    nonfinite: int = 0
    zeros: int = 0
    min: float = math.inf
    max: float = -math.inf
    sum: float = 0.0
    sumsq: float = 0.0
    batch_min: np.ndarray = attrs.field(factory=lambda: np.zeros(0), converter=_f64_array)
    batch_max: np.ndarray = attrs.field(factory=lambda: np.zeros(0), converter=_f64_array)
    hist: np.ndarray = attrs.field(factory=lambda: np.zeros(0, np.int64),
                                   converter=lambda h: np.asarray(h, dtype=np.int64))
    hist_first: int = 0
    hist_width: float = 0.0
    channel_min: np.ndarray | None = attrs.field(default=None, converter=_opt_f64_array)
    channel_max: np.ndarray | None = attrs.field(default=None, converter=_opt_f64_array)
    channel_sum: np.ndarray | None = attrs.field(default=None, converter=_opt_f64_array)
    # compute_range results by options: the searches (mse, entropy) are worth remembering
    # when a plan is re-derived many times (mixed precision); any update clears it.
    _ranges: dict = attrs.field(factory=dict, init=False, repr=False)

    @property
    def batches(self) -> int:
        return int(self.batch_min.size)

    @property
    def mean(self) -> float:
        return self.sum / self.count if self.count else math.nan

    @property
    def std(self) -> float:
        if not self.count:
            return math.nan
        return math.sqrt(max(self.sumsq / self.count - self.mean ** 2, 0.0))

    @property
    def absmax(self) -> float:
        return max(abs(self.min), abs(self.max)) if self.count else 0.0

    def hist_edges(self) -> np.ndarray:
        """The ``len(hist) + 1`` bin edges of ``hist``."""
        return (self.hist_first + np.arange(self.hist.size + 1)) * self.hist_width

    def update(self, array) -> "TensorStats":
        """Fold one batch (any float array) into these stats; returns self."""
        self._ranges.clear()
        x = np.asarray(array)
        flat = x.astype(np.float64, copy=False).ravel()
        finite = np.isfinite(flat)
        all_finite = bool(finite.all())
        values = flat if all_finite else flat[finite]
        self.nonfinite += int(flat.size - values.size)
        if self.axis is not None and x.ndim:
            self._update_channels(x.astype(np.float64, copy=False), None if all_finite else
                                  finite.reshape(x.shape))
        if values.size == 0:
            return self
        lo, hi = float(values.min()), float(values.max())
        self.count += int(values.size)
        self.zeros += int(values.size - np.count_nonzero(values))
        self.min, self.max = min(self.min, lo), max(self.max, hi)
        with np.errstate(over="ignore"):  # float64 data near its limits: inf sums, no harm
            self.sum += float(values.sum())
            self.sumsq += float(np.dot(values, values))
        self.batch_min = np.append(self.batch_min, lo)
        self.batch_max = np.append(self.batch_max, hi)
        self._update_hist(values, lo, hi)
        return self

    # -- histogram ---------------------------------------------------------------------------
    def _update_hist(self, values: np.ndarray, lo: float, hi: float) -> None:
        if self.hist_width == 0.0:
            self.hist_width = _initial_width(lo, hi, self.bins)
            self.hist_first = int(math.floor(lo / self.hist_width))
            self.hist = np.zeros(0, np.int64)
        k = self._doublings_to_cover(lo, hi)
        if k:
            self._coarsen(k)
        width = self.hist_width
        index = np.floor(values / width).astype(np.int64)
        first = min(self.hist_first, int(index.min())) if self.hist.size else int(index.min())
        last = max(self.hist_first + self.hist.size - 1, int(index.max())) if self.hist.size \
            else int(index.max())
        grown = np.zeros(last - first + 1, np.int64)
        if self.hist.size:
            grown[self.hist_first - first:self.hist_first - first + self.hist.size] = self.hist
        grown += np.bincount(index - first, minlength=grown.size)
        self.hist, self.hist_first = grown, first

    def _doublings_to_cover(self, lo: float, hi: float) -> int:
        """The least k with every old bin and [lo, hi] inside ``bins`` bins of width 2^k w."""
        old_lo = self.hist_first * self.hist_width if self.hist.size else lo
        old_hi = (self.hist_first + self.hist.size) * self.hist_width if self.hist.size else hi
        lo, hi = min(lo, old_lo), max(hi, old_hi)
        # Start near the answer (a log2 guess) so a huge jump in range costs few iterations;
        # halves keep the span finite for float64 data near its limits.
        half_span = hi / 2 - lo / 2
        k = 0
        if half_span > 0:
            guess = math.log2(half_span) + 1 - math.log2(self.hist_width) - math.log2(self.bins)
            k = max(0, int(math.floor(guess)) - 1)
        while not self._fits(lo, hi, math.ldexp(self.hist_width, k)):
            k += 1
        return k

    def _fits(self, lo: float, hi: float, width: float) -> bool:
        # Bin indices are int64: data far from 0 relative to its spread (float64 tensors
        # only) needs a coarser grid than the bin count alone asks for.
        top = max(abs(lo), abs(hi)) / width
        return (top < 2.0 ** 62  # also false for inf
                and math.floor(hi / width) - math.floor(lo / width) + 1 <= self.bins)

    def _coarsen(self, k: int) -> None:
        """Merge bins 2^k at a time (old bin i -> new bin i >> k): exact, counts preserved."""
        self.hist, self.hist_first = _merge_bins(self.hist, self.hist_first, k)
        self.hist_width = math.ldexp(self.hist_width, k)

    def _update_channels(self, x: np.ndarray, finite: np.ndarray | None) -> None:
        axis = self.axis if self.axis >= 0 else self.axis + x.ndim
        if not 0 <= axis < x.ndim:
            raise QirError(f"tensor {self.name or '?'} of shape {list(x.shape)} has no axis "
                           f"{self.axis} for per-channel statistics")
        moved = np.moveaxis(x, axis, 0).reshape(x.shape[axis], -1)
        if finite is not None:
            mask = np.moveaxis(finite, axis, 0).reshape(x.shape[axis], -1)
            cmin = np.where(mask, moved, np.inf).min(axis=1, initial=np.inf)
            cmax = np.where(mask, moved, -np.inf).max(axis=1, initial=-np.inf)
            csum = np.where(mask, moved, 0.0).sum(axis=1)
        else:
            cmin = moved.min(axis=1, initial=np.inf)
            cmax = moved.max(axis=1, initial=-np.inf)
            csum = moved.sum(axis=1)
        if self.channel_min is None:
            self.channel_min, self.channel_max, self.channel_sum = cmin, cmax, csum
            return
        if self.channel_min.size != cmin.size:
            raise QirError(f"tensor {self.name or '?'}: {cmin.size} channels along axis {self.axis} "
                           f"in this batch, {self.channel_min.size} before",
                           hint="per-channel statistics need the same channel count in every batch")
        self.channel_min = np.minimum(self.channel_min, cmin)
        self.channel_max = np.maximum(self.channel_max, cmax)
        self.channel_sum = self.channel_sum + csum

    # -- views for the searches --------------------------------------------------------------
    def zero_view(self) -> tuple[np.ndarray, int, float]:
        """(hist, first, width): the histogram merged until it spans 0 too within ``bins``
        bins. Quantized ranges always hold 0, so the searches need no finer grid than this, and
        data far from 0 (e.g. all in [1000, 1001]) must not make them walk millions of bins."""
        first, last = self.hist_first, self.hist_first + max(self.hist.size - 1, 0)
        k = 0
        while (max(last, 0) >> k) - (min(first, 0) >> k) + 1 > self.bins:
            k += 1
        hist, first = _merge_bins(self.hist, first, k)
        return hist, first, math.ldexp(self.hist_width, k)

    def abs_hist(self) -> tuple[np.ndarray, float]:
        """(counts, width): counts of |x| in ``[j*width, (j+1)*width)``, j = 0.. (from the zero
        view; bin i < 0 folds onto -i-1)."""
        hist, first, width = self.zero_view()
        if not hist.size:
            return np.zeros(0, np.int64), width
        index = first + np.arange(hist.size, dtype=np.int64)
        folded = np.where(index >= 0, index, -index - 1)
        return np.bincount(folded, weights=hist.astype(np.float64)).round().astype(np.int64), width

    # -- serialization -----------------------------------------------------------------------
    def to_state(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        """(JSON-able scalars, arrays): what ``from_state`` rebuilds these stats from."""
        scalars = {f: None if getattr(self, f) is None else kind(getattr(self, f))
                   for f, kind in _SCALAR_FIELDS.items()}
        arrays = {f: getattr(self, f) for f in _ARRAY_FIELDS if getattr(self, f) is not None}
        return scalars, arrays

    @classmethod
    def from_state(cls, scalars: dict[str, Any], arrays: dict[str, np.ndarray]) -> "TensorStats":
        unknown = set(scalars) - set(_SCALAR_FIELDS) or set(arrays) - set(_ARRAY_FIELDS)
        if unknown:
            raise QirError(f"tensor statistics: unknown fields {sorted(unknown)}")
        stats = cls(**scalars, **arrays)
        if stats.batch_min.shape != stats.batch_max.shape or stats.hist.ndim != 1 \
                or stats.hist_width < 0 or stats.hist.sum() != stats.count:
            raise QirError(f"tensor statistics of {stats.name!r} are inconsistent")
        return stats


_SCALAR_FIELDS = {"name": str, "bins": int, "axis": int, "count": int, "nonfinite": int,
                  "zeros": int, "min": float, "max": float, "sum": float, "sumsq": float,
                  "hist_first": int, "hist_width": float}
_ARRAY_FIELDS = ("batch_min", "batch_max", "hist", "channel_min", "channel_max", "channel_sum")


def _merge_bins(hist: np.ndarray, first: int, k: int) -> tuple[np.ndarray, int]:
    """``hist`` (bin ``first + j`` at index j) with bins merged 2^k at a time: i -> i >> k."""
    if k == 0 or not hist.size:
        return hist, first >> k
    new_index = (first + np.arange(hist.size, dtype=np.int64)) >> k
    new_first = int(new_index[0])
    merged = np.bincount(new_index - new_first, weights=hist.astype(np.float64))
    return np.rint(merged).astype(np.int64), new_first


def _initial_width(lo: float, hi: float, bins: int) -> float:
    """A first bin width fitting [lo, hi] in ``bins`` bins (two spare for floor rounding)."""
    half_span = hi / 2 - lo / 2  # halves: finite even for float64 data near its limits
    if half_span > 0:
        width = half_span / ((bins - 2) / 2)
    elif lo != 0:
        width = abs(lo) / (bins - 2)
    else:
        width = 2.0 ** -24  # all zeros so far: any width works, the first real range re-bins it
    return max(width, 1e-300)  # float64 subnormal data must not give a zero width


class StatsCollector:
    """Collects TensorStats of named tensors batch by batch::

        collector = StatsCollector()
        for batch in data:
            collector.update("x", batch)
        collector.stats["x"]
    """

    def __init__(self, bins: int = DEFAULT_BINS, axis: int | None = None):
        if bins < 16:
            raise QirError(f"histogram bins={bins}: use at least 16")
        self.bins, self.axis = bins, axis
        self.stats: dict[str, TensorStats] = {}

    def update(self, name: str, array) -> None:
        stats = self.stats.get(name)
        if stats is None:
            # Tensors too small for the channel axis (scalars, vectors) get per-tensor stats.
            ndim = np.ndim(array)
            axis = self.axis if self.axis is not None and -ndim <= self.axis < ndim else None
            stats = self.stats[name] = TensorStats(name=name, bins=self.bins, axis=axis)
        stats.update(array)


# -- ranges ----------------------------------------------------------------------------------

RangeFn = Callable[["TensorStats", int, bool, float, float], tuple[float, float]]
_ALGORITHMS: dict[str, RangeFn] = {}


def range_algorithm(name: str):
    """Register a range algorithm ``fn(stats, bitwidth, symmetric, percentile, momentum)``."""
    def register(fn: RangeFn) -> RangeFn:
        _ALGORITHMS[name] = fn
        return fn
    return register


def algorithms() -> tuple[str, ...]:
    return tuple(_ALGORITHMS)


def compute_range(stats: TensorStats, algorithm: str = "minmax", *, bitwidth: int = 8,
                  symmetric: bool = False, percentile: float = 99.99,
                  momentum: float = 0.9) -> tuple[float, float]:
    """The clipping range ``(lo, hi)`` of a tensor by ``algorithm`` (see the module docstring).

    Symmetric ranges come back as ``(-t, t)``. The range always lies within the data's
    ``[min, max]`` (symmetric: within ``[-max|x|, max|x|]``).
    """
    try:
        fn = _ALGORITHMS[algorithm]
    except KeyError:
        raise QirError(f"unknown calibration algorithm {algorithm!r}; expected one of "
                       f"{', '.join(_ALGORITHMS)}") from None
    if stats.count == 0:
        what = f"tensor {stats.name!r}" if stats.name else "a tensor"
        raise QirError(f"{what} had no finite values in the calibration set "
                       f"({stats.nonfinite} inf/NaN)",
                       hint="calibrate on data for which the model computes finite values")
    if not 50.0 <= percentile <= 100.0:
        raise QirError(f"percentile={percentile}: expected a value in [50, 100], e.g. 99.99",
                       hint="the range is [P(100 - p), P(p)]")
    if not 0.0 <= momentum < 1.0:
        raise QirError(f"momentum={momentum}: expected a value in [0, 1)")
    if bitwidth < 2:
        raise QirError(f"bitwidth={bitwidth}: expected at least 2 bits")
    key = (algorithm, bitwidth, symmetric, percentile, momentum)
    found = stats._ranges.get(key)
    if found is None:
        if stats.absmax == 0.0:  # all zeros: nothing to clip, nothing to search
            fn = _minmax
        lo, hi = fn(stats, bitwidth, symmetric, percentile, momentum)
        found = stats._ranges[key] = (float(lo), float(hi))
    return found


def _symmetric(t: float) -> tuple[float, float]:
    return -t, t


@range_algorithm("minmax")
def _minmax(stats: TensorStats, bitwidth, symmetric, percentile, momentum):
    return _symmetric(stats.absmax) if symmetric else (stats.min, stats.max)


def _ema(values: np.ndarray, momentum: float) -> float:
    r = float(values[0])
    for v in values[1:]:
        r = momentum * r + (1.0 - momentum) * float(v)
    return r


@range_algorithm("ma_minmax")
def _ma_minmax(stats: TensorStats, bitwidth, symmetric, percentile, momentum):
    if symmetric:
        return _symmetric(_ema(np.maximum(np.abs(stats.batch_min), np.abs(stats.batch_max)), momentum))
    return _ema(stats.batch_min, momentum), _ema(stats.batch_max, momentum)


def _abs_args(stats: TensorStats):
    """(hist, first, width) of |x| at the histogram's own width: bin i < 0 folds onto -i-1.
    The folded bins span no more than the raw ones, so (unlike ``abs_hist``, which goes
    through the zero view) no merging is needed and quantiles keep the full resolution."""
    if not stats.hist.size:
        return np.zeros(0, np.int64), 0, stats.hist_width
    index = stats.hist_first + np.arange(stats.hist.size, dtype=np.int64)
    folded = np.where(index >= 0, index, -index - 1)
    low = int(folded.min())
    counts = np.bincount(folded - low, weights=stats.hist.astype(np.float64)).round().astype(np.int64)
    return counts, low, stats.hist_width


def _hist_quantile(hist: np.ndarray, first: int, width: float, q: float) -> float:
    """The q-quantile of histogrammed data as numpy's default ``percentile`` defines it (linear
    between the order statistics around rank ``q*(n-1)``), each order statistic placed evenly
    inside its bin: within one bin width of ``np.percentile`` of the data."""
    n = int(hist.sum())
    rank = q * (n - 1)
    below = int(math.floor(rank))
    ranks = np.array([below, min(below + 1, n - 1)])
    cum = np.cumsum(hist)
    j = np.minimum(np.searchsorted(cum, ranks, side="right"), hist.size - 1)
    before = cum[j] - hist[j]
    values = (first + j + (ranks - before + 0.5) / np.maximum(hist[j], 1)) * width
    frac = rank - below
    return float(values[0] * (1.0 - frac) + values[1] * frac)


@range_algorithm("percentile")
def _percentile(stats: TensorStats, bitwidth, symmetric, percentile, momentum):
    if percentile == 100.0:
        return _minmax(stats, bitwidth, symmetric, percentile, momentum)
    q = percentile / 100.0
    if symmetric:
        t = _hist_quantile(*_abs_args(stats), q)
        return _symmetric(min(t, stats.absmax))
    lo = _hist_quantile(stats.hist, stats.hist_first, stats.hist_width, 1.0 - q)
    hi = _hist_quantile(stats.hist, stats.hist_first, stats.hist_width, q)
    return min(max(lo, stats.min), stats.max), min(max(hi, stats.min), stats.max)


# -- MSE ---------------------------------------------------------------------------------------
#
# The expected squared error of quantizing the histogrammed data with a candidate range, as
# activation_params would quantize it: scale s, zero point nudged so that 0 is on the grid s*Z,
# values outside the representable [lo', hi'] clipped to it, values inside rounded to the grid.
# Values are taken as spread evenly in their bin, so every term is an exact integral: clipping
# error from bin moments, rounding error from the integral of the squared sawtooth (exact when
# s is far below a bin width, s^2/12, and when a bin sits inside one step). Units are bins.

def _sawtooth_integral(u: np.ndarray) -> np.ndarray:
    """G(u) = integral from -1/2 to u of (t - round(t))^2 dt (rounding half up)."""
    whole = np.floor(u + 0.5)
    frac = u - whole
    cube = frac * frac
    cube *= frac
    cube += 0.125
    cube *= 1.0 / 3.0
    whole *= 1.0 / 12.0
    whole += cube
    return whole


class _MseModel:
    """Expected squared error of candidate ranges over one histogram (bin units)."""

    def __init__(self, counts: np.ndarray, first: int):
        self.counts, self.first = counts, first
        self.edges = first + np.arange(counts.size + 1, dtype=np.float64)
        # Bin moments about the histogram's own start keep the sums well conditioned.
        u = np.arange(counts.size) + 0.5
        self.m0 = np.concatenate([[0.0], np.cumsum(counts)])
        self.m1 = np.concatenate([[0.0], np.cumsum(counts * u)])
        self.m2 = np.concatenate([[0.0], np.cumsum(counts * u * u)])

    def _bin_of(self, cut: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(local cut, index of its bin clipped to [0, n], whether it lies inside a bin)."""
        local = cut - self.first
        a = np.floor(local)
        inside = (a >= 0) & (a < self.counts.size)
        return local, np.clip(a, 0, self.counts.size).astype(np.int64), inside

    def clip_above(self, cut: np.ndarray) -> np.ndarray:
        local, a, inside = self._bin_of(cut)
        partial = np.where(inside, self.counts[np.minimum(a, self.counts.size - 1)]
                           * (a + 1 - local) ** 3 / 3.0, 0.0)
        k = np.where(inside, a + 1, a)  # full bins from k on
        k = np.where(local < 0, 0, k)
        c0, c1, c2 = self.m0[-1] - self.m0[k], self.m1[-1] - self.m1[k], self.m2[-1] - self.m2[k]
        return partial + np.maximum(c2 - 2 * local * c1 + local * local * c0, 0.0) + c0 / 12.0

    def clip_below(self, cut: np.ndarray) -> np.ndarray:
        local, a, inside = self._bin_of(cut)
        partial = np.where(inside, self.counts[np.minimum(a, self.counts.size - 1)]
                           * (local - a) ** 3 / 3.0, 0.0)
        k = np.where(local < 0, 0, a)  # full bins below k
        c0, c1, c2 = self.m0[k], self.m1[k], self.m2[k]
        return partial + np.maximum(c2 - 2 * local * c1 + local * local * c0, 0.0) + c0 / 12.0

    def rounding(self, lo: np.ndarray, hi: np.ndarray, step: np.ndarray) -> np.ndarray:
        """Rounding error of the values in [lo, hi] on the grid step*Z."""
        out = np.empty(step.size)
        chunk = max(1, (1 << 21) // self.edges.size)  # bound the candidates x edges temporaries
        for start in range(0, step.size, chunk):
            part = slice(start, start + chunk)
            s = step[part, None]
            g = _sawtooth_integral(self.edges[None, :] / s)
            prefix = np.concatenate([np.zeros((s.shape[0], 1)),
                                     np.cumsum(self.counts * s ** 3 * np.diff(g, axis=1), axis=1)], axis=1)
            out[part] = self._cumulative(prefix, hi[part], s[:, 0]) - self._cumulative(prefix, lo[part], s[:, 0])
        return out

    def _cumulative(self, prefix: np.ndarray, cut: np.ndarray, s: np.ndarray) -> np.ndarray:
        """Rounding error of the values below ``cut``, per candidate row of ``prefix``."""
        local, a, inside = self._bin_of(cut)
        rows = np.arange(cut.size)
        full = prefix[rows, np.where(local < 0, 0, a)]
        left = self.edges[np.minimum(a, self.counts.size - 1)]
        partial = self.counts[np.minimum(a, self.counts.size - 1)] * s ** 3 * (
            _sawtooth_integral(cut / s) - _sawtooth_integral(left / s))
        return full + np.where(inside, partial, 0.0)

    def error(self, lo: np.ndarray, hi: np.ndarray, step: np.ndarray) -> np.ndarray:
        """Total error when [lo, hi] is what the grid represents."""
        return self.clip_below(lo) + self.clip_above(hi) + self.rounding(lo, hi, step)


def _asymmetric_grid(lo: np.ndarray, hi: np.ndarray, levels: int):
    """activation_params' representable range and step for candidate [lo, hi] (lo <= 0 <= hi)."""
    # float32 steps, as activation_params stores its scales
    step = np.asarray(np.maximum(hi - lo, 1e-12) / (levels - 1), np.float32).astype(np.float64)
    low = -np.rint(-lo / step) * step
    return low, low + (levels - 1) * step, step


def _subsample(cands: np.ndarray, most: int) -> np.ndarray:
    """At most ``most`` evenly spaced entries of sorted ``cands``, both ends kept."""
    if cands.size <= most:
        return cands
    return cands[np.unique(np.linspace(0, cands.size - 1, most).round().astype(np.int64))]


def _neighbourhood(cands: np.ndarray, sampled: np.ndarray, centre: float) -> np.ndarray:
    """The candidates between the sampled neighbours of ``centre``."""
    i = int(np.searchsorted(sampled, centre))
    lo, hi = sampled[max(i - 1, 0)], sampled[min(i + 1, sampled.size - 1)]
    return cands[(cands >= lo) & (cands <= hi)]


def _grid_search(lo_cands: np.ndarray, hi_cands: np.ndarray, cost) -> tuple[float, float]:
    """Coarse-to-fine search of the (lo, hi) candidate grid for the least ``cost(lo, hi)``;
    ties go to the widest range. ``lo_cands`` of one entry makes it a line search."""
    lo_pool, hi_pool = lo_cands, hi_cands
    best = (math.inf, float(lo_cands[0]), float(hi_cands[-1]))
    while True:
        los = _subsample(lo_pool, 17)
        his = _subsample(hi_pool, 65 if los.size == 1 else 17)
        lo_grid, hi_grid = (g.ravel() for g in np.meshgrid(los, his, indexing="ij"))
        errors = cost(lo_grid, hi_grid)
        order = np.argsort(-(hi_grid - lo_grid), kind="stable")  # widest first
        k = int(order[np.argmin(errors[order])])
        if errors[k] < best[0] * (1.0 - 1e-12) or (errors[k] == best[0] == 0.0):
            best = (float(errors[k]), float(lo_grid[k]), float(hi_grid[k]))
        if los.size == lo_pool.size and his.size == hi_pool.size:
            return best[1], best[2]
        lo_pool = _neighbourhood(lo_cands, los, best[1])
        hi_pool = _neighbourhood(hi_cands, his, best[2])


def _search_counts(stats: TensorStats, hist: np.ndarray, first: int):
    """Bin counts (float) without the exact zeros, which quantize exactly in any range."""
    counts = hist.astype(np.float64)
    zero_bin = -first
    if 0 <= zero_bin < counts.size:
        counts[zero_bin] = max(counts[zero_bin] - stats.zeros, 0.0)
    return counts


@range_algorithm("mse")
def _mse(stats: TensorStats, bitwidth, symmetric, percentile, momentum):
    hist, first, w = stats.zero_view()
    model = _MseModel(_search_counts(stats, hist, first), first)
    last = first + hist.size  # edge indices
    if symmetric:
        # activation_params: step t/(2^(b-1)-1); the grid holds [-(2^(b-1)) step, t].
        qmax = float((1 << (bitwidth - 1)) - 1)
        top = stats.absmax / w
        ts = np.concatenate([np.arange(1, math.ceil(top), dtype=np.float64), [top]])

        def cost(_, t):
            step = t / qmax
            return model.error(-(qmax + 1) * step, t, step)

        _, t = _grid_search(np.zeros(1), ts, cost)
        return _symmetric(min(t * w, stats.absmax))
    # The quantized range always holds 0 (activation_params widens it to), so the candidate
    # cuts run from the data's ends to 0 over the bin edges between.
    lo_end, hi_end = min(stats.min / w, 0.0), max(stats.max / w, 0.0)
    los = np.unique(np.concatenate([[lo_end], np.arange(first + 1, 1, dtype=np.float64), [0.0]]))
    los = los[los >= lo_end]
    his = np.unique(np.concatenate([[0.0], np.arange(max(first, 0), last, dtype=np.float64), [hi_end]]))
    his = his[his <= hi_end]
    levels = 1 << bitwidth

    def cost(lo, hi):
        low, high, step = _asymmetric_grid(lo, hi, levels)
        return model.error(low, high, step)

    lo, hi = _grid_search(los, his, cost)
    return min(max(lo * w, stats.min), stats.max), min(max(hi * w, stats.min), stats.max)


def _argmin_last(values: np.ndarray) -> int:
    """Index of the last minimum (ties go to the widest range)."""
    return int(values.size - 1 - np.argmin(values[::-1]))


# -- entropy -----------------------------------------------------------------------------------

def kl_threshold_bin(hist: np.ndarray, levels: int) -> int:
    """TensorRT's KL calibration on an |x| histogram: the bin count ``i`` (threshold = edge i)
    whose ``levels``-level quantization of ``hist[:i]`` (outliers clipped into the last bin)
    diverges least from the original. Returns ``len(hist)`` when there are no more bins than
    levels (quantizing loses nothing at this resolution)."""
    h = np.asarray(hist, dtype=np.float64)
    n = h.size
    if n <= levels:
        return n
    suffix = np.concatenate([np.cumsum(h[::-1])[::-1], [0.0]])
    divergence = np.full(n - levels + 1, np.inf)
    for i in range(levels, n + 1):
        ref = h[:i].copy()
        ref[-1] += suffix[i]
        if ref.sum() <= 0:
            continue
        group = (np.arange(i) * levels) // i
        used = h[:i] != 0
        group_sum = np.bincount(group, weights=h[:i], minlength=levels)
        group_used = np.bincount(group, weights=used, minlength=levels)
        cand = np.where(used, group_sum[group] / np.maximum(group_used[group], 1.0), 0.0)
        if cand.sum() <= 0:
            continue
        p, q = ref / ref.sum(), cand / cand.sum()
        if np.any((p > 0) & (q == 0)):
            continue
        nz = p > 0
        divergence[i - levels] = float(np.sum(p[nz] * np.log(p[nz] / q[nz])))
    if not np.isfinite(divergence).any():
        return n
    return levels + _argmin_last(divergence)


@range_algorithm("entropy")
def _entropy(stats: TensorStats, bitwidth, symmetric, percentile, momentum):
    counts, width = stats.abs_hist()
    hist = _search_counts(stats, counts, 0)
    one_sided = stats.min >= 0 or stats.max <= 0
    levels = 1 << (bitwidth if (one_sided and not symmetric) else bitwidth - 1)
    t = min(kl_threshold_bin(hist, levels) * width, stats.absmax)
    if symmetric:
        return _symmetric(t)
    return max(-t, stats.min), min(t, stats.max)


# -- weights -----------------------------------------------------------------------------------

def weight_absmax(w: np.ndarray, axis: int | None = 0, bitwidth: int = 8,
                  algorithm: str = "minmax") -> np.ndarray:
    """Per-channel (``axis``; per tensor when None) clipping |max| of symmetric weights.

    ``minmax``: max |w|. ``mse``: the clip ``t <= max|w|`` minimizing the mean squared error of
    quantizing the weights themselves to ``±(2^(b-1)-1)`` levels of ``t/(2^(b-1)-1)``; a
    coarse-to-fine search over ``t = f * max|w|``, f in [0.2, 1] (ties go to the larger t).
    Returns a float64 array: one entry per channel, or a 0-d array per tensor.
    """
    w = np.asarray(w, dtype=np.float64)
    if axis is None:
        rows = w.reshape(1, -1)
    else:
        if not -w.ndim <= axis < w.ndim:
            raise QirError(f"weights of shape {list(w.shape)} have no axis {axis}")
        rows = np.moveaxis(w, axis, 0).reshape(w.shape[axis], -1)
    absmax = np.abs(rows).max(axis=1, initial=0.0)
    if algorithm == "minmax":
        result = absmax
    elif algorithm == "mse":
        result = _weight_mse_search(rows, absmax, bitwidth)
    else:
        raise QirError(f"unknown weight range algorithm {algorithm!r}; expected minmax or mse")
    return result.reshape(()) if axis is None else result


def _weight_mse_search(rows: np.ndarray, absmax: np.ndarray, bitwidth: int) -> np.ndarray:
    from qir.passes.quantize.params import MIN_SCALE

    qmax = float((1 << (bitwidth - 1)) - 1)

    def error(fraction: np.ndarray) -> np.ndarray:
        scale = np.maximum(absmax * fraction / qmax, MIN_SCALE)[:, None]
        return np.square(np.clip(np.rint(rows / scale), -qmax, qmax) * scale - rows).sum(axis=1)

    best_f = np.ones_like(absmax)
    best_err = error(best_f)
    coarse = np.linspace(1.0, 0.2, 17)
    for f in coarse[1:]:
        _keep_better(best_f, best_err, np.full_like(absmax, f), error(np.full_like(absmax, f)))
    step = coarse[0] - coarse[1]
    centre = best_f.copy()
    for offset in np.linspace(step, -step, 21):
        f = np.clip(centre + offset, 0.05, 1.0)
        _keep_better(best_f, best_err, f, error(f))
    return absmax * best_f


def _keep_better(best_f, best_err, f, err) -> None:
    # Strictly better only, after a tolerance: float noise must not pick a smaller clip.
    better = err < best_err * (1.0 - 1e-12)
    best_f[better], best_err[better] = f[better], err[better]
