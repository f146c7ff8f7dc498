"""The nn family: activations, softmax, convolution (plain, transposed, deformable, causal),
pooling, normalization, dropout, recurrent cells (RNN, GRU, LSTM) and attention (scaled
dot-product, flex, linear).

Every op has the semantics of the newest ONNX version of the op it is named after, with every
attribute explicit. Kernels compute narrow floats (float16, bfloat16, float8) in float32 and
return the input's dtype; float64 stays float64 (Attention computes float16 in float16, as
ONNX's reference does). Convolution is an im2col + batched matmul so
that BLAS does the work; pooling uses strided window views, never Python loops over pixels.

Spatial ops keep ``auto_pad`` in their schema: the ONNX converter resolves it to explicit
``pads`` when the input's spatial shape is static, and the kernels resolve it at run time
otherwise.
"""

from __future__ import annotations

import itertools
import math
from typing import Callable, Sequence

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from qir.ir.opdef import REQUIRED, Attr, InferContext, op
from qir.ir.ops.infer import broadcast_shapes, normalize_axis, same_as
from qir.ir.types import Dim, DType, TensorType

UNKNOWN: Dim = "?"
"""A dim that cannot be known before run time (the importer's spelling of an unnamed dim)."""


# -- helpers -------------------------------------------------------------------------------

def _work_dtype(dtype: np.dtype) -> np.dtype:
    """The dtype a kernel computes in: float64 stays, every other float becomes float32."""
    dtype = np.dtype(dtype)
    return np.dtype(np.float64) if dtype == np.float64 else np.dtype(np.float32)


def _f(x: np.ndarray) -> np.ndarray:
    """``x`` in its compute dtype (a copy only when the dtype changes)."""
    return np.asarray(x).astype(_work_dtype(np.asarray(x).dtype), copy=False)


def _like(y: np.ndarray, x: np.ndarray) -> np.ndarray:
    return np.asarray(y).astype(np.asarray(x).dtype, copy=False)


def _erf(x: np.ndarray) -> np.ndarray:
    """Exact erf (numpy has none): math.erf elementwise, in float64."""
    flat = np.asarray(x, dtype=np.float64).reshape(-1)
    return np.fromiter((math.erf(v) for v in flat), dtype=np.float64, count=flat.size).reshape(np.shape(x))


def _sigmoid(x: np.ndarray) -> np.ndarray:
    # exp of a non-positive number only: no overflow warnings for large |x|.
    e = np.exp(-np.abs(x))
    return np.where(x >= 0, 1 / (1 + e), e / (1 + e))


def _softplus(x: np.ndarray) -> np.ndarray:
    return np.logaddexp(0, x)


# -- activations ---------------------------------------------------------------------------

def _activation(name: str, fn: Callable[..., np.ndarray], attrs: dict[str, Attr] | None = None,
                doc: str = "") -> None:
    """Register an elementwise float activation ``y = fn(x, **attrs)`` (same type as x)."""

    def kernel(x, **kw):
        return _like(fn(_f(x), **kw), x)

    kernel.__name__ = name.split(".")[1]
    kernel.__qualname__ = kernel.__name__
    op(name, inputs=["x"], outputs=["y"], attrs=attrs, infer=same_as(0), doc=doc)(kernel)


@op("nn.relu", inputs=["x"], outputs=["y"], infer=same_as(0))
def relu(x):
    """max(x, 0), for floats and signed ints alike."""
    return np.maximum(x, np.zeros((), dtype=x.dtype)).astype(x.dtype, copy=False)


_activation("nn.leaky_relu", lambda x, alpha: np.where(x >= 0, x, x * np.asarray(alpha, x.dtype)),
            {"alpha": Attr("float", 0.01)}, "x if x >= 0 else alpha·x")
_activation("nn.elu", lambda x, alpha: np.where(x > 0, x, np.asarray(alpha, x.dtype) * np.expm1(np.minimum(x, 0))),
            {"alpha": Attr("float", 1.0)}, "x if x > 0 else alpha·(exp(x) − 1)")
_activation("nn.selu",
            lambda x, alpha, gamma: np.asarray(gamma, x.dtype) * np.where(
                x > 0, x, np.asarray(alpha, x.dtype) * np.expm1(np.minimum(x, 0))),
            {"alpha": Attr("float", 1.67326319217681884765625),
             "gamma": Attr("float", 1.05070102214813232421875)}, "gamma·elu(x, alpha)")
_activation("nn.celu",
            lambda x, alpha: np.maximum(x, 0) + np.minimum(0, np.asarray(alpha, x.dtype) * np.expm1(
                np.minimum(x, 0) / np.asarray(alpha, x.dtype))),
            {"alpha": Attr("float", 1.0)}, "max(0, x) + min(0, alpha·(exp(x/alpha) − 1))")
_activation("nn.sigmoid", _sigmoid, doc="1 / (1 + exp(−x))")
_activation("nn.hard_sigmoid",
            lambda x, alpha, beta: np.clip(np.asarray(alpha, x.dtype) * x + np.asarray(beta, x.dtype), 0, 1),
            {"alpha": Attr("float", 0.2), "beta": Attr("float", 0.5)}, "clip(alpha·x + beta, 0, 1)")
_activation("nn.hard_swish", lambda x: x * np.clip(x / np.asarray(6, x.dtype) + np.asarray(0.5, x.dtype), 0, 1),
            doc="x · hard_sigmoid(x, 1/6, 1/2)")
_activation("nn.softplus", _softplus, doc="log(1 + exp(x))")
_activation("nn.softsign", lambda x: x / (1 + np.abs(x)), doc="x / (1 + |x|)")
_activation("nn.tanh", np.tanh, doc="tanh(x)")
_activation("nn.mish", lambda x: x * np.tanh(_softplus(x)), doc="x · tanh(softplus(x))")
_activation("nn.thresholded_relu", lambda x, alpha: np.where(x > np.asarray(alpha, x.dtype), x, 0),
            {"alpha": Attr("float", 1.0)}, "x if x > alpha else 0")
_activation("nn.swish", lambda x, alpha: x * _sigmoid(np.asarray(alpha, x.dtype) * x),
            {"alpha": Attr("float", 1.0)}, "x · sigmoid(alpha·x)")


def _check_same_shape(ctx) -> None:
    a, b = ctx.shape(0), ctx.shape(1)
    if a is not None and b is not None and len(a) == len(b) and any(
            isinstance(x, int) and isinstance(y, int) and x != y for x, y in zip(a, b)):
        raise ctx.fail(f"gate and value must have the same shape, got {list(a)} and {list(b)}")


@op("nn.swiglu", inputs=["a", "b"], outputs=["y"], attrs={"alpha": Attr("float", 1.0)},
    infer=same_as(0), verify=_check_same_shape)
def swiglu(a, b, *, alpha):
    """swish(a, alpha) · b: the gated activation of Llama-style MLPs (no broadcasting)."""
    if a.shape != b.shape:
        raise ValueError(f"gate and value shapes differ: {a.shape} vs {b.shape}")
    fa, fb = _f(a), _f(b)
    return _like(fa * _sigmoid(np.asarray(alpha, fa.dtype) * fa) * fb, a)


def _gelu(x, approximate):
    if approximate == "tanh":
        inner = math.sqrt(2 / math.pi) * (x + 0.044715 * x ** 3)
        return 0.5 * x * (1 + np.tanh(inner))
    if approximate != "none":
        raise ValueError(f"Gelu approximate must be 'none' or 'tanh', not {approximate!r}")
    return (0.5 * x * (1 + _erf(x / math.sqrt(2)))).astype(x.dtype)


_activation("nn.gelu", _gelu, {"approximate": Attr("str", "none")},
            "x·Φ(x) (approximate='tanh': the tanh approximation)")


@op("nn.prelu", inputs=["x", "slope"], outputs=["y"],
    infer=lambda ctx: [TensorType(ctx.dtype(0), broadcast_shapes(ctx.shape(0), ctx.shape(1)))])
def prelu(x, slope):
    """x if x >= 0 else slope·x; slope broadcasts onto x (unidirectionally)."""
    y = np.where(x >= 0, x, x * slope.astype(x.dtype, copy=False))
    return y.astype(x.dtype, copy=False)


# -- softmax family ------------------------------------------------------------------------

def _sum_along(x, axis):
    """``np.sum(x, axis, keepdims=True)`` summing each lane in the same order wherever ``axis``
    lies in memory (numpy sums a contiguous axis pairwise, a strided one sequentially), so that
    the kernel of a transposed input is exactly the transposed result: passes that move
    transposes through softmax (cancel-transposes) keep outputs bit-identical."""
    lanes = np.ascontiguousarray(np.moveaxis(x, axis, -1))
    return np.moveaxis(np.sum(lanes, axis=-1, keepdims=True), -1, axis)


def _softmax(x, axis):
    x = _f(x)
    m = np.max(x, axis=axis, keepdims=True)
    e = np.exp(x - np.where(np.isfinite(m), m, 0))
    return e / _sum_along(e, axis)


@op("nn.softmax", inputs=["x"], outputs=["y"], attrs={"axis": Attr("int", -1)}, infer=same_as(0))
def softmax(x, *, axis):
    """exp(x) / sum(exp(x)) along ``axis`` (opset-13 semantics: one axis, no flattening)."""
    return _like(_softmax(x, axis), x)


@op("nn.log_softmax", inputs=["x"], outputs=["y"], attrs={"axis": Attr("int", -1)}, infer=same_as(0))
def log_softmax(x, *, axis):
    """x − max − log(sum(exp(x − max))) along ``axis``."""
    xf = _f(x)
    m = np.max(xf, axis=axis, keepdims=True)
    shifted = xf - np.where(np.isfinite(m), m, 0)
    return _like(shifted - np.log(_sum_along(np.exp(shifted), axis)), x)


@op("nn.hardmax", inputs=["x"], outputs=["y"], attrs={"axis": Attr("int", -1)}, infer=same_as(0))
def hardmax(x, *, axis):
    """1 at the first maximum along ``axis``, 0 elsewhere."""
    idx = np.expand_dims(np.argmax(x, axis=axis), axis)
    y = np.zeros_like(x)
    np.put_along_axis(y, idx, 1, axis=axis)
    return y


# -- spatial geometry (conv and pooling) ---------------------------------------------------

def _ints(values, n: int, fill: int) -> list[int]:
    """An attribute list of ``n`` ints, ``fill`` when the list is empty."""
    values = list(values or ())
    return [int(v) for v in values] if values else [fill] * n


def auto_pads(auto_pad: str, spatial: Sequence[int], kernel: Sequence[int], strides: Sequence[int],
              dilations: Sequence[int], pads: Sequence[int] | None = None) -> list[int]:
    """Explicit [begin..., end...] pads for ``auto_pad`` on static spatial dims.

    SAME_* pads so that out = ceil(in / stride), the odd cell going at the end (UPPER) or the
    beginning (LOWER); VALID pads nothing; NOTSET keeps ``pads`` (zeros when empty).
    """
    n = len(spatial)
    if auto_pad in ("NOTSET", ""):
        return _ints(pads, 2 * n, 0)
    if auto_pad == "VALID":
        return [0] * (2 * n)
    if auto_pad not in ("SAME_UPPER", "SAME_LOWER"):
        raise ValueError(f"auto_pad must be NOTSET, SAME_UPPER, SAME_LOWER or VALID, not {auto_pad!r}")
    begin, end = [], []
    for size, k, s, d in zip(spatial, kernel, strides, dilations):
        out = -(-size // s)
        total = max(0, (out - 1) * s + (k - 1) * d + 1 - size)
        small, big = total // 2, total - total // 2
        begin.append(small if auto_pad == "SAME_UPPER" else big)
        end.append(big if auto_pad == "SAME_UPPER" else small)
    return begin + end


def out_size(size: int, k: int, s: int, d: int, pb: int, pe: int, ceil_mode: bool = False) -> int:
    """Output length of a window of k taps (dilation d) sliding by s over a padded axis.

    In ceil mode a last partial window counts, unless it would start in the end padding.
    """
    span = size + pb + pe - ((k - 1) * d + 1)
    if not ceil_mode:
        return span // s + 1
    out = -(-span // s) + 1
    if (out - 1) * s >= size + pb:
        out -= 1
    return out


class Geometry:
    """Resolved geometry of a conv/pool node for one static input shape."""

    def __init__(self, spatial, kernel, strides, dilations, pads, auto_pad, ceil_mode=False):
        n = len(spatial)
        self.spatial = [int(v) for v in spatial]
        self.kernel = [int(v) for v in kernel]
        self.strides = _ints(strides, n, 1)
        self.dilations = _ints(dilations, n, 1)
        self.pads = auto_pads(auto_pad, self.spatial, self.kernel, self.strides, self.dilations, pads)
        # A window larger than the padded input gives an empty output, not a negative size.
        self.out = [max(out_size(*a, ceil_mode), 0) for a in zip(self.spatial, self.kernel, self.strides,
                                                                 self.dilations, self.pads[:n], self.pads[n:])]
        self.taps = int(np.prod(self.kernel))
        self.eff = [(k - 1) * d + 1 for k, d in zip(self.kernel, self.dilations)]
        # Extra end padding so every window (ceil mode's last partial ones too) lies in the array.
        self.pad_end = [max(pe, (o - 1) * s + e - size - pb) for o, s, e, size, pb, pe in
                        zip(self.out, self.strides, self.eff, self.spatial, self.pads[:n], self.pads[n:])]

    def pad(self, x: np.ndarray, value=0) -> np.ndarray:
        n = len(self.spatial)
        width = [(0, 0)] * (x.ndim - n) + [(pb, pe) for pb, pe in zip(self.pads[:n], self.pad_end)]
        if not any(w != (0, 0) for w in width):
            return x
        return np.pad(x, width, mode="constant", constant_values=value)

    def windows(self, xp: np.ndarray) -> np.ndarray:
        """A view [..., *out, *kernel] of the windows of padded ``xp``."""
        n = len(self.spatial)
        axes = tuple(range(xp.ndim - n, xp.ndim))
        if any(o <= 0 for o in self.out):
            shape = xp.shape[:xp.ndim - n] + tuple(max(o, 0) for o in self.out) + tuple(self.kernel)
            return np.zeros(shape, dtype=xp.dtype)
        view = sliding_window_view(xp, self.eff, axis=axes)
        index = (Ellipsis,) + tuple(slice(0, (o - 1) * s + 1, s) for o, s in zip(self.out, self.strides)) \
            + tuple(slice(None, None, d) for d in self.dilations)
        return view[index]


def _spatial_out_shape(in_shape, kernel, strides, dilations, pads, auto_pad, ceil_mode=False):
    """Output spatial dims for possibly symbolic input dims (UNKNOWN where not computable)."""
    n = len(kernel)
    strides, dilations = _ints(strides, n, 1), _ints(dilations, n, 1)
    out = []
    for i, size in enumerate(in_shape):
        if not isinstance(size, int) or not isinstance(kernel[i], int):
            if auto_pad in ("SAME_UPPER", "SAME_LOWER") and strides[i] == 1:
                out.append(size)  # SAME with stride 1 keeps the dim, symbol and all
            else:
                out.append(UNKNOWN)
            continue
        p = auto_pads(auto_pad, [size], [kernel[i]], [strides[i]], [dilations[i]],
                      None if not pads else [pads[i], pads[n + i]])
        out.append(max(out_size(size, kernel[i], strides[i], dilations[i], p[0], p[1], ceil_mode), 0))
    return out


_SPATIAL_ATTRS = {
    "auto_pad": Attr("str", "NOTSET"),
    "dilations": Attr("ints", ()),
    "kernel_shape": Attr("ints", ()),
    "pads": Attr("ints", ()),
    "strides": Attr("ints", ()),
}


# -- convolution ---------------------------------------------------------------------------

def _conv_infer(ctx: InferContext):
    xs, ws = ctx.shape(0), ctx.shape(1)
    dtype = ctx.dtype(0)
    if xs is None:
        return [TensorType(dtype, None)]
    n = len(xs) - 2
    kernel = list(ctx.attrs["kernel_shape"]) or (list(ws[2:]) if ws is not None else [UNKNOWN] * n)
    m = ws[0] if ws is not None else UNKNOWN
    a = ctx.attrs
    spatial = _spatial_out_shape(xs[2:], kernel, a["strides"], a["dilations"], a["pads"], a["auto_pad"])
    return [TensorType(dtype, (xs[0], m, *spatial))]


@op("nn.conv", inputs=["x", "w", "b?"], outputs=["y"],
    attrs={**_SPATIAL_ATTRS, "group": Attr("int", 1)}, infer=_conv_infer)
def conv(x, w, b=None, *, auto_pad, dilations, group, kernel_shape, pads, strides):
    """N-D grouped, dilated convolution (cross-correlation), x: [N, C, *S], w: [M, C/group, *K]."""
    wd = _work_dtype(x.dtype)
    xf, wf = x.astype(wd, copy=False), w.astype(wd, copy=False)
    n = x.ndim - 2
    kernel = list(kernel_shape) or list(w.shape[2:])
    geo = Geometry(x.shape[2:], kernel, strides, dilations, pads, auto_pad)
    N, C = x.shape[:2]
    M, G = w.shape[0], int(group)
    Cg, Mg = C // G, M // G
    O, K = tuple(max(o, 0) for o in geo.out), tuple(kernel)
    po, pk = int(np.prod(O)), int(np.prod(K))
    if pk == 1 and all(s == 1 for s in geo.strides) and not any(geo.pads):
        # 1×1 kernel, stride 1, no padding: the input already is the column matrix.
        cols = xf.reshape(N, G, Cg, po).transpose(1, 2, 0, 3).reshape(G, Cg, N * po)
    else:
        # im2col: [G, Cg·K, N·O] (the one copy) ...
        win = geo.windows(geo.pad(xf)).reshape((N, G, Cg) + O + K)  # [N, G, Cg, *O, *K]
        perm = (1, 2) + tuple(range(3 + n, 3 + 2 * n)) + (0,) + tuple(range(3, 3 + n))
        cols = win.transpose(perm).reshape(G, Cg * pk, N * po)
    # ... times the weights [G, Mg, Cg·K] in one batched GEMM; for N = 1 the result already
    # is in NCHW order.
    y = np.matmul(wf.reshape(G, Mg, Cg * pk), cols)  # [G, Mg, N·O]
    y = y.reshape((G, Mg, N) + O).transpose((2, 0, 1) + tuple(range(3, 3 + n))).reshape((N, M) + O)
    if b is not None:
        y = y + b.astype(wd, copy=False).reshape((M,) + (1,) * n)
    return y.astype(x.dtype, copy=False)


def conv_transpose_geometry(in_spatial, kernel, strides, dilations, pads, auto_pad, output_padding,
                            output_shape):
    """(pads begin, pads end, output spatial shape) of a ConvTranspose, as ONNX defines them."""
    n = len(in_spatial)
    strides, dilations = _ints(strides, n, 1), _ints(dilations, n, 1)
    output_padding = _ints(output_padding, n, 0)
    full = [s * (i - 1) + op_ + (k - 1) * d + 1
            for i, k, s, d, op_ in zip(in_spatial, kernel, strides, dilations, output_padding)]
    if output_shape or auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        target = list(output_shape)[-n:] if output_shape else [i * s for i, s in zip(in_spatial, strides)]
        total = [f - t for f, t in zip(full, target)]
        if auto_pad == "SAME_UPPER":
            begin = [t // 2 for t in total]
        else:
            begin = [t - t // 2 for t in total]
        end = [t - b for t, b in zip(total, begin)]
        return begin, end, [int(t) for t in target]
    p = [0] * (2 * n) if auto_pad == "VALID" else _ints(pads, 2 * n, 0)
    return p[:n], p[n:], [f - pb - pe for f, pb, pe in zip(full, p[:n], p[n:])]


def _conv_transpose_infer(ctx: InferContext):
    xs, ws = ctx.shape(0), ctx.shape(1)
    dtype = ctx.dtype(0)
    if xs is None:
        return [TensorType(dtype, None)]
    a = ctx.attrs
    n = len(xs) - 2
    m = ws[1] * a["group"] if ws is not None and isinstance(ws[1], int) else UNKNOWN
    kernel = list(a["kernel_shape"]) or (list(ws[2:]) if ws is not None else [UNKNOWN] * n)
    if a["output_shape"]:
        spatial = list(a["output_shape"])[-n:]
    elif all(isinstance(d, int) for d in list(xs[2:]) + kernel):
        spatial = conv_transpose_geometry(xs[2:], kernel, a["strides"], a["dilations"], a["pads"],
                                          a["auto_pad"], a["output_padding"], a["output_shape"])[2]
    else:
        spatial = [UNKNOWN] * n
    return [TensorType(dtype, (xs[0], m, *spatial))]


@op("nn.conv_transpose", inputs=["x", "w", "b?"], outputs=["y"],
    attrs={**_SPATIAL_ATTRS, "group": Attr("int", 1), "output_padding": Attr("ints", ()),
           "output_shape": Attr("ints", ())},
    infer=_conv_transpose_infer)
def conv_transpose(x, w, b=None, *, auto_pad, dilations, group, kernel_shape, output_padding,
                   output_shape, pads, strides):
    """Transposed convolution, x: [N, C, *S], w: [C, M/group, *K]: one GEMM, then col2im."""
    wd = _work_dtype(x.dtype)
    xf, wf = x.astype(wd, copy=False), w.astype(wd, copy=False)
    n = x.ndim - 2
    N, C = x.shape[:2]
    G = int(group)
    Cg, Mg = C // G, w.shape[1]
    M = Mg * G
    I, K = tuple(x.shape[2:]), tuple(w.shape[2:])
    pi, pk = int(np.prod(I)), int(np.prod(K))
    s, d = _ints(strides, n, 1), _ints(dilations, n, 1)
    pb, pe, out = conv_transpose_geometry(I, K, s, d, pads, auto_pad, output_padding, output_shape)
    xs = xf.reshape(N, G, Cg, pi).transpose(1, 0, 3, 2).reshape(G, N * pi, Cg)
    cols = np.matmul(xs, wf.reshape(G, Cg, Mg * pk))  # [G, N·I, Mg·K]
    cols = cols.reshape((G, N) + I + (Mg,) + K)
    perm = (1, 0, 2 + n) + tuple(range(3 + n, 3 + 2 * n)) + tuple(range(2, 2 + n))
    cols = cols.transpose(perm).reshape((N, M) + K + I)
    # col2im: every kernel tap adds its strided slab; the buffer covers pads on both sides.
    lo = [min(0, p) for p in pb]  # negative pads (output_shape larger than natural) grow the buffer
    full = [max((i - 1) * st + (k - 1) * dl + 1, b_ + o) - l
            for i, st, k, dl, b_, o, l in zip(I, s, K, d, pb, out, lo)]
    buf = np.zeros((N, M) + tuple(full), dtype=wd)
    for tap in itertools.product(*(range(k) for k in K)):
        index = (slice(None), slice(None)) + tuple(
            slice(t * dl - l, t * dl - l + (i - 1) * st + 1, st) for t, dl, l, i, st in zip(tap, d, lo, I, s))
        buf[index] += cols[(slice(None), slice(None)) + tap]
    crop = (slice(None), slice(None)) + tuple(slice(b_ - l, b_ - l + o) for b_, l, o in zip(pb, lo, out))
    y = buf[crop]
    if b is not None:
        y = y + b.astype(wd, copy=False).reshape((M,) + (1,) * n)
    return np.ascontiguousarray(y).astype(x.dtype, copy=False)


# -- pooling -------------------------------------------------------------------------------

def _pool_infer(ctx: InferContext, n_out: int = 1):
    xs = ctx.shape(0)
    dtype = ctx.dtype(0)
    if xs is None:
        return [TensorType(dtype, None), TensorType(DType.INT64, None)][:max(n_out, 1)]
    a = ctx.attrs
    spatial = _spatial_out_shape(xs[2:], list(a["kernel_shape"]), a["strides"], a["dilations"],
                                 a["pads"], a["auto_pad"], bool(a.get("ceil_mode", 0)))
    shape = (xs[0], xs[1], *spatial)
    return [TensorType(dtype, shape), TensorType(DType.INT64, shape)][:max(n_out, 1)]


_POOL_ATTRS = {**_SPATIAL_ATTRS, "kernel_shape": Attr("ints", REQUIRED), "ceil_mode": Attr("int", 0)}


def _lowest(dtype: np.dtype):
    dtype = np.dtype(dtype)
    return -np.inf if dtype.kind == "f" else np.iinfo(dtype).min


@op("nn.max_pool", inputs=["x"], outputs=["y", "indices?"],
    attrs={**_POOL_ATTRS, "storage_order": Attr("int", 0)}, infer=lambda ctx: _pool_infer(ctx, 2))
def max_pool(x, *, auto_pad, ceil_mode, dilations, kernel_shape, pads, storage_order, strides):
    """Max over windows; ``indices`` are flat positions in x (row-major, or column-major over
    the spatial dims when storage_order=1)."""
    n = x.ndim - 2
    geo = Geometry(x.shape[2:], kernel_shape, strides, dilations, pads, auto_pad, bool(ceil_mode))
    # Narrow floats (float16, bfloat16...) compare in float32; ints and wide floats as they are.
    xw = x if x.dtype in (np.float32, np.float64) or x.dtype.kind in "iu" else _f(x)
    win = geo.windows(geo.pad(xw, _lowest(xw.dtype)))
    O = win.shape[2:2 + n]
    flat = win.reshape(win.shape[:2 + n] + (geo.taps,))
    y = flat.max(axis=-1).astype(x.dtype, copy=False)
    # Indices: the window argmax turned back into input coordinates.
    arg = flat.argmax(axis=-1)
    taps = np.unravel_index(arg, tuple(kernel_shape))
    spatial = x.shape[2:]
    coords = []
    for i in range(n):
        grid = np.arange(O[i]).reshape((-1,) + (1,) * (n - 1 - i)) * geo.strides[i] - geo.pads[i]
        coords.append(grid + taps[i] * geo.dilations[i])
    if storage_order:
        idx = np.zeros_like(arg)
        for i in reversed(range(n)):
            idx = idx * spatial[i] + coords[i]
    else:
        idx = np.zeros_like(arg)
        for i in range(n):
            idx = idx * spatial[i] + coords[i]
    nc = (np.arange(x.shape[0]).reshape((-1, 1) + (1,) * n) * x.shape[1]
          + np.arange(x.shape[1]).reshape((1, -1) + (1,) * n)) * int(np.prod(spatial))
    return y, (idx + nc).astype(np.int64)


def window_count(geo: Geometry, include_pad: bool, dtype) -> np.ndarray:
    """How many taps of each window fall in the input (or in input + explicit pads); the
    extra end cells that ceil mode adds never count."""
    n = len(geo.spatial)
    mask = np.zeros([pb + s + e for pb, s, e in zip(geo.pads[:n], geo.spatial, geo.pad_end)], dtype)
    if include_pad:
        mask[tuple(slice(0, pb + s + pe) for pb, s, pe in zip(geo.pads[:n], geo.spatial, geo.pads[n:]))] = 1
    else:
        mask[tuple(slice(pb, pb + s) for pb, s in zip(geo.pads[:n], geo.spatial))] = 1
    return geo.windows(mask).reshape(tuple(geo.out) + (geo.taps,)).sum(axis=-1)


@op("nn.average_pool", inputs=["x"], outputs=["y"],
    attrs={**_POOL_ATTRS, "count_include_pad": Attr("int", 0)}, infer=_pool_infer)
def average_pool(x, *, auto_pad, ceil_mode, count_include_pad, dilations, kernel_shape, pads, strides):
    """Mean over windows; padding counts in the divisor only with count_include_pad (the extra
    cells of ceil mode never count)."""
    n = x.ndim - 2
    xf = _f(x)
    geo = Geometry(x.shape[2:], kernel_shape, strides, dilations, pads, auto_pad, bool(ceil_mode))
    win = geo.windows(geo.pad(xf, 0))
    total = win.reshape(win.shape[:2 + n] + (geo.taps,)).sum(axis=-1)
    count = window_count(geo, bool(count_include_pad), xf.dtype)
    return _like(total / np.maximum(count, 1), x)


@op("nn.lp_pool", inputs=["x"], outputs=["y"], attrs={**_POOL_ATTRS, "p": Attr("int", 2)},
    infer=_pool_infer)
def lp_pool(x, *, auto_pad, ceil_mode, dilations, kernel_shape, p, pads, strides):
    """(sum |x|^p)^(1/p) over windows (padding adds zeros)."""
    n = x.ndim - 2
    xf = _f(x)
    geo = Geometry(x.shape[2:], kernel_shape, strides, dilations, pads, auto_pad, bool(ceil_mode))
    win = geo.windows(geo.pad(np.abs(xf) ** p, 0))
    return _like(win.reshape(win.shape[:2 + n] + (geo.taps,)).sum(axis=-1) ** (1.0 / p), x)


def _global_infer(ctx: InferContext):
    xs = ctx.shape(0)
    shape = None if xs is None else (*xs[:2], *([1] * (len(xs) - 2)))
    return [TensorType(ctx.dtype(0), shape)]


@op("nn.global_average_pool", inputs=["x"], outputs=["y"], infer=_global_infer)
def global_average_pool(x):
    """Mean over all spatial dims, kept as size-1 dims."""
    return _like(_f(x).mean(axis=tuple(range(2, x.ndim)), keepdims=True), x)


@op("nn.global_max_pool", inputs=["x"], outputs=["y"], infer=_global_infer)
def global_max_pool(x):
    """Max over all spatial dims, kept as size-1 dims."""
    return x.max(axis=tuple(range(2, x.ndim)), keepdims=True)


@op("nn.global_lp_pool", inputs=["x"], outputs=["y"], attrs={"p": Attr("int", 2)}, infer=_global_infer)
def global_lp_pool(x, *, p):
    """(sum |x|^p)^(1/p) over all spatial dims."""
    xf = _f(x)
    return _like((np.abs(xf) ** p).sum(axis=tuple(range(2, x.ndim)), keepdims=True) ** (1.0 / p), x)


# -- normalization -------------------------------------------------------------------------

def _channel(v: np.ndarray, ndim: int, wd) -> np.ndarray:
    """A per-channel vector [C] shaped to broadcast over [N, C, *S]."""
    return v.astype(wd, copy=False).reshape((1, -1) + (1,) * (ndim - 2))


def _bn_infer(ctx: InferContext):
    out = [TensorType(ctx.dtype(0), ctx.shape(0))]
    if ctx.attrs["training_mode"]:
        out += [TensorType(ctx.dtype(3), ctx.shape(3)), TensorType(ctx.dtype(4), ctx.shape(4))]
    return out


@op("nn.batch_normalization", inputs=["x", "scale", "b", "input_mean", "input_var"],
    outputs=["y", "running_mean?", "running_var?"],
    attrs={"epsilon": Attr("float", 1e-5), "momentum": Attr("float", 0.9),
           "training_mode": Attr("int", 0)}, infer=_bn_infer)
def batch_normalization(x, scale, b, input_mean, input_var, *, epsilon, momentum, training_mode):
    """(x − mean)/sqrt(var + ε)·scale + b per channel; training_mode uses the batch statistics
    and also returns the updated running mean and variance."""
    wd = _work_dtype(x.dtype)
    xf = x.astype(wd, copy=False)
    if training_mode:
        axes = (0,) + tuple(range(2, x.ndim))
        mean, var = xf.mean(axis=axes), xf.var(axis=axes)
        y = (xf - _channel(mean, x.ndim, wd)) / np.sqrt(_channel(var, x.ndim, wd) + epsilon)
        y = y * _channel(scale, x.ndim, wd) + _channel(b, x.ndim, wd)
        run_mean = input_mean.astype(wd) * momentum + mean * (1 - momentum)
        run_var = input_var.astype(wd) * momentum + var * (1 - momentum)
        return (_like(y, x), run_mean.astype(input_mean.dtype), run_var.astype(input_var.dtype))
    inv = _channel(scale, x.ndim, wd) / np.sqrt(_channel(input_var, x.ndim, wd) + epsilon)
    y = (xf - _channel(input_mean, x.ndim, wd)) * inv + _channel(b, x.ndim, wd)
    return _like(y, x)


@op("nn.instance_normalization", inputs=["x", "scale", "b"], outputs=["y"],
    attrs={"epsilon": Attr("float", 1e-5)}, infer=same_as(0))
def instance_normalization(x, scale, b, *, epsilon):
    """Normalize each (sample, channel) over its spatial dims, then scale and shift per channel."""
    wd = _work_dtype(x.dtype)
    xf = x.astype(wd, copy=False)
    axes = tuple(range(2, x.ndim))
    mean = xf.mean(axis=axes, keepdims=True)
    var = ((xf - mean) ** 2).mean(axis=axes, keepdims=True)
    y = (xf - mean) / np.sqrt(var + epsilon) * _channel(scale, x.ndim, wd) + _channel(b, x.ndim, wd)
    return _like(y, x)


def _stash(stash_type: int):
    # stash_type is an ONNX element type: 1 = float32, 11 = float64.
    return np.float64 if stash_type == 11 else np.float32


def _layer_norm_infer(ctx: InferContext):
    xs = ctx.shape(0)
    y = TensorType(ctx.dtype(0), xs)
    stat_dtype = DType.FLOAT64 if ctx.attrs["stash_type"] == 11 else DType.FLOAT32
    if xs is None:
        return [y, TensorType(stat_dtype, None), TensorType(stat_dtype, None)]
    axis = normalize_axis(ctx.attrs["axis"], len(xs))
    stat = tuple(xs[:axis]) + (1,) * (len(xs) - axis)
    return [y, TensorType(stat_dtype, stat), TensorType(stat_dtype, stat)]


@op("nn.layer_normalization", inputs=["x", "scale", "b?"], outputs=["y", "mean?", "inv_std_dev?"],
    attrs={"axis": Attr("int", -1), "epsilon": Attr("float", 1e-5), "stash_type": Attr("int", 1)},
    infer=_layer_norm_infer)
def layer_normalization(x, scale, b=None, *, axis, epsilon, stash_type):
    """Normalize over dims [axis, rank), then scale (and shift); also returns mean and 1/std."""
    axis = normalize_axis(axis, x.ndim)
    sd = _stash(stash_type)
    xf = x.astype(sd)
    axes = tuple(range(axis, x.ndim))
    mean = xf.mean(axis=axes, keepdims=True)
    inv = 1 / np.sqrt(((xf - mean) ** 2).mean(axis=axes, keepdims=True) + epsilon)
    y = ((xf - mean) * inv).astype(x.dtype).astype(sd) * scale.astype(sd)
    if b is not None:
        y = y + b.astype(sd)
    return _like(y, x), mean.astype(sd), inv.astype(sd)


@op("nn.group_normalization", inputs=["x", "scale", "bias"], outputs=["y"],
    attrs={"epsilon": Attr("float", 1e-5), "num_groups": Attr("int", REQUIRED),
           "stash_type": Attr("int", 1)}, infer=same_as(0))
def group_normalization(x, scale, bias, *, epsilon, num_groups, stash_type):
    """Normalize over (channels of a group × spatial dims), then scale and shift per channel."""
    sd = _stash(stash_type)
    N, C = x.shape[:2]
    xg = x.astype(sd).reshape((N, num_groups, -1))
    mean = xg.mean(axis=-1, keepdims=True)
    var = ((xg - mean) ** 2).mean(axis=-1, keepdims=True)
    y = ((xg - mean) / np.sqrt(var + epsilon)).reshape(x.shape)
    y = y * _channel(scale, x.ndim, sd) + _channel(bias, x.ndim, sd)
    return _like(y, x)


@op("nn.rms_normalization", inputs=["x", "scale"], outputs=["y"],
    attrs={"axis": Attr("int", -1), "epsilon": Attr("float", 1e-5), "stash_type": Attr("int", 1)},
    infer=same_as(0))
def rms_normalization(x, scale, *, axis, epsilon, stash_type):
    """x / sqrt(mean(x²) + ε) over dims [axis, rank), times scale."""
    axis = normalize_axis(axis, x.ndim)
    sd = _stash(stash_type)
    xf = x.astype(sd)
    rms = np.sqrt((xf ** 2).mean(axis=tuple(range(axis, x.ndim)), keepdims=True) + epsilon)
    return _like((xf / rms) * scale.astype(sd), x)


@op("nn.lp_normalization", inputs=["x"], outputs=["y"],
    attrs={"axis": Attr("int", -1), "p": Attr("int", 2)}, infer=same_as(0))
def lp_normalization(x, *, axis, p):
    """x / ||x||_p along ``axis`` (p is 1 or 2)."""
    xf = _f(x)
    norm = np.sum(np.abs(xf), axis=axis, keepdims=True) if p == 1 else \
        np.sqrt(np.sum(xf * xf, axis=axis, keepdims=True))
    with np.errstate(divide="ignore", invalid="ignore"):
        y = np.where(norm == 0, 0, xf / np.where(norm == 0, 1, norm))
    return _like(y, x)


@op("nn.lrn", inputs=["x"], outputs=["y"],
    attrs={"alpha": Attr("float", 1e-4), "beta": Attr("float", 0.75), "bias": Attr("float", 1.0),
           "size": Attr("int", REQUIRED)}, infer=same_as(0))
def lrn(x, *, alpha, beta, bias, size):
    """Local response normalization across channels: x / (bias + alpha/size·Σ x²)^beta."""
    xf = _f(x)
    sq = xf * xf
    lo, hi = (size - 1) // 2, size - 1 - (size - 1) // 2
    padded = np.pad(sq, [(0, 0), (lo, hi)] + [(0, 0)] * (x.ndim - 2))
    csum = np.cumsum(padded, axis=1)
    csum = np.concatenate([np.zeros_like(csum[:, :1]), csum], axis=1)
    total = csum[:, size:] - csum[:, :-size]
    return _like(xf / (bias + alpha / size * total) ** beta, x)


@op("nn.mean_variance_normalization", inputs=["x"], outputs=["y"],
    attrs={"axes": Attr("ints", (0, 2, 3))}, infer=same_as(0))
def mean_variance_normalization(x, *, axes):
    """(x − mean) / sqrt(var) over ``axes`` (ε = 1e-9 as in ONNX's definition)."""
    xf = _f(x)
    axes = tuple(int(a) % x.ndim for a in axes)
    mean = xf.mean(axis=axes, keepdims=True)
    var = (xf * xf).mean(axis=axes, keepdims=True) - mean * mean
    return _like((xf - mean) / (np.sqrt(var) + 1e-9), x)


# -- dropout -------------------------------------------------------------------------------

def _dropout_infer(ctx: InferContext):
    return [TensorType(ctx.dtype(0), ctx.shape(0)), TensorType(DType.BOOL, ctx.shape(0))]


@op("nn.dropout", inputs=["data", "ratio?", "training_mode?"], outputs=["output", "mask?"],
    attrs={"seed": Attr("int", None)}, infer=_dropout_infer)
def dropout(data, ratio=None, training_mode=None, *, seed):
    """Identity with an all-true mask unless training_mode is true; then zero a ``ratio`` share
    of elements at random and scale the rest by 1/(1−ratio). The random stream is numpy's
    legacy ``RandomState(seed)`` uniform draw (keep where u >= ratio), as ONNX's own test data."""
    training = training_mode is not None and bool(np.asarray(training_mode))
    r = 0.5 if ratio is None else float(np.asarray(ratio))
    if not training or r == 0:
        return data.copy(), np.ones(data.shape, dtype=bool)
    mask = np.random.RandomState(seed).uniform(0, 1.0, data.shape) >= r
    y = _f(data) * mask / (1 - r)
    return _like(y, data), mask


# -- recurrent: RNN, GRU, LSTM -------------------------------------------------------------

def _scaled_tanh(x, alpha, beta):
    return alpha * np.tanh(beta * x)


#: Activations of the recurrent ops: fn(x, alpha, beta) and their default (alpha, beta).
RNN_ACTIVATIONS: dict[str, tuple[Callable, tuple[float | None, float | None]]] = {
    "relu": (lambda x, a, b: np.maximum(x, 0), (None, None)),
    "tanh": (lambda x, a, b: np.tanh(x), (None, None)),
    "sigmoid": (lambda x, a, b: _sigmoid(x), (None, None)),
    "affine": (lambda x, a, b: a * x + b, (1.0, 0.0)),
    "leakyrelu": (lambda x, a, b: np.where(x >= 0, x, a * x), (0.01, None)),
    "thresholdedrelu": (lambda x, a, b: np.where(x > a, x, 0), (1.0, None)),
    "scaledtanh": (_scaled_tanh, (1.0, 1.0)),
    "hardsigmoid": (lambda x, a, b: np.clip(a * x + b, 0, 1), (0.2, 0.5)),
    "elu": (lambda x, a, b: np.where(x > 0, x, a * np.expm1(np.minimum(x, 0))), (1.0, None)),
    "softsign": (lambda x, a, b: x / (1 + np.abs(x)), (None, None)),
    "softplus": (lambda x, a, b: _softplus(x), (None, None)),
}


def _activation_fns(names, alphas, betas, defaults: Sequence[str], num_dir: int) -> list[list[Callable]]:
    """Per direction, the activation functions (alpha/beta lists consumed in order by the
    activations that take them)."""
    per_dir = len(defaults)
    names = list(names) if names else list(defaults) * num_dir
    if len(names) == per_dir and num_dir == 2:
        names = names * 2
    alphas, betas = list(alphas or ()), list(betas or ())
    fns = []
    for name in names:
        key = name.lower()
        if key not in RNN_ACTIVATIONS:
            raise ValueError(f"unknown recurrent activation {name!r}; known: {', '.join(RNN_ACTIVATIONS)}")
        fn, (da, db) = RNN_ACTIVATIONS[key]
        a = alphas.pop(0) if da is not None and alphas else da
        b = betas.pop(0) if db is not None and betas else db
        fns.append(lambda x, fn=fn, a=a, b=b: fn(x, a, b))
    return [fns[d * per_dir:(d + 1) * per_dir] for d in range(num_dir)]


def _num_dir(direction: str) -> int:
    if direction not in ("forward", "reverse", "bidirectional"):
        raise ValueError(f"direction must be forward, reverse or bidirectional, not {direction!r}")
    return 2 if direction == "bidirectional" else 1


def _scan_directions(x, seq_lens, direction, init_states, step):
    """Run ``step(d, x_t, states) -> states`` over time for each direction.

    x: [T, B, I] (time-major); init_states: list of [num_dir, B, H]. Batch entries past their
    sequence length keep their state and output zeros. Returns (Y [T, num_dir, B, H], states).
    """
    T, B = x.shape[:2]
    num_dir = _num_dir(direction)
    lens = np.full(B, T, dtype=np.int64) if seq_lens is None else np.asarray(seq_lens, dtype=np.int64)
    H = init_states[0].shape[-1]
    Y = np.zeros((T, num_dir, B, H), dtype=x.dtype)
    final = []
    batch = np.arange(B)
    for d in range(num_dir):
        reverse = direction == "reverse" or d == 1
        states = [s[d] for s in init_states]
        for t in range(T):
            valid = (t < lens)[:, None]
            index = np.clip(lens - 1 - t, 0, T - 1) if reverse else np.full(B, t)
            new = step(d, x[index, batch], states)
            states = [np.where(valid, n, s) for n, s in zip(new, states)]
            Y[index[valid[:, 0]], d, batch[valid[:, 0]]] = states[0][valid[:, 0]]
        final.append(states)
    return Y, [np.stack([f[i] for f in final]) for i in range(len(init_states))]


def _rnn_infer(n_states: int):
    def infer(ctx: InferContext):
        xs = ctx.shape(0)
        dt = ctx.dtype(0)
        a = ctx.attrs
        nd = _num_dir(a["direction"])
        H = a["hidden_size"]
        if xs is None:
            return [TensorType(dt, None)] * (1 + n_states)
        T, B = (xs[1], xs[0]) if a["layout"] else (xs[0], xs[1])
        y = (B, T, nd, H) if a["layout"] else (T, nd, B, H)
        h = (B, nd, H) if a["layout"] else (nd, B, H)
        return [TensorType(dt, y)] + [TensorType(dt, h)] * n_states

    return infer


_RNN_ATTRS = {
    "activation_alpha": Attr("floats", ()), "activation_beta": Attr("floats", ()),
    "activations": Attr("strs", ()), "clip": Attr("float", None), "direction": Attr("str", "forward"),
    "hidden_size": Attr("int", REQUIRED), "layout": Attr("int", 0),
}


def _rnn_prepare(x, layout, states, num_dir, H):
    """Time-major compute-dtype x and initial states [num_dir, B, H] (zeros when omitted)."""
    wd = _work_dtype(x.dtype)
    xf = x.astype(wd, copy=False)
    if layout:
        xf = xf.transpose(1, 0, 2)
    B = xf.shape[1]
    out = []
    for s in states:
        if s is None:
            out.append(np.zeros((num_dir, B, H), dtype=wd))
        else:
            s = s.astype(wd, copy=False)
            out.append(s.transpose(1, 0, 2) if layout else s)
    return xf, out


def _rnn_outputs(x, Y, finals, layout):
    if layout:
        Y = Y.transpose(2, 0, 1, 3)
        finals = [f.transpose(1, 0, 2) for f in finals]
    return tuple(_like(v, x) for v in (Y, *finals))


def _clip(v, clip):
    return v if clip is None else np.clip(v, -clip, clip)


@op("nn.rnn", inputs=["x", "w", "r", "b?", "sequence_lens?", "initial_h?"], outputs=["y?", "y_h?"],
    attrs=dict(_RNN_ATTRS), infer=_rnn_infer(1))
def rnn(x, w, r, b=None, sequence_lens=None, initial_h=None, *, activation_alpha, activation_beta,
        activations, clip, direction, hidden_size, layout):
    """Elman RNN: H_t = f(X_t·Wᵀ + H_{t−1}·Rᵀ + Wb + Rb)."""
    nd, H = _num_dir(direction), hidden_size
    xf, (h0,) = _rnn_prepare(x, layout, [initial_h], nd, H)
    fns = _activation_fns(activations, activation_alpha, activation_beta, ["Tanh"], nd)
    wf, rf = w.astype(xf.dtype), r.astype(xf.dtype)
    bias = np.zeros((nd, 2 * H), xf.dtype) if b is None else b.astype(xf.dtype)

    def step(d, xt, states):
        (h,) = states
        pre = xt @ wf[d].T + h @ rf[d].T + bias[d, :H] + bias[d, H:]
        return [fns[d][0](_clip(pre, clip))]

    Y, finals = _scan_directions(xf, sequence_lens, direction, [h0], step)
    return _rnn_outputs(x, Y, finals, layout)


@op("nn.gru", inputs=["x", "w", "r", "b?", "sequence_lens?", "initial_h?"], outputs=["y?", "y_h?"],
    attrs={**_RNN_ATTRS, "linear_before_reset": Attr("int", 0)}, infer=_rnn_infer(1))
def gru(x, w, r, b=None, sequence_lens=None, initial_h=None, *, activation_alpha, activation_beta,
        activations, clip, direction, hidden_size, layout, linear_before_reset):
    """GRU with gates in ONNX order (z, r, h); linear_before_reset applies the reset gate after
    the recurrent matmul."""
    nd, H = _num_dir(direction), hidden_size
    xf, (h0,) = _rnn_prepare(x, layout, [initial_h], nd, H)
    fns = _activation_fns(activations, activation_alpha, activation_beta, ["Sigmoid", "Tanh"], nd)
    wf, rf = w.astype(xf.dtype), r.astype(xf.dtype)
    bias = np.zeros((nd, 6 * H), xf.dtype) if b is None else b.astype(xf.dtype)

    def step(d, xt, states):
        (h,) = states
        f, g = fns[d]
        wb, rb = bias[d, :3 * H], bias[d, 3 * H:]
        xw = xt @ wf[d].T + wb
        hr = h @ rf[d, :2 * H].T + rb[:2 * H]
        z = f(_clip(xw[:, :H] + hr[:, :H], clip))
        rg = f(_clip(xw[:, H:2 * H] + hr[:, H:], clip))
        if linear_before_reset:
            hh = g(_clip(xw[:, 2 * H:] + rg * (h @ rf[d, 2 * H:].T + rb[2 * H:]), clip))
        else:
            hh = g(_clip(xw[:, 2 * H:] + (rg * h) @ rf[d, 2 * H:].T + rb[2 * H:], clip))
        return [(1 - z) * hh + z * h]

    Y, finals = _scan_directions(xf, sequence_lens, direction, [h0], step)
    return _rnn_outputs(x, Y, finals, layout)


@op("nn.lstm", inputs=["x", "w", "r", "b?", "sequence_lens?", "initial_h?", "initial_c?", "p?"],
    outputs=["y?", "y_h?", "y_c?"], attrs={**_RNN_ATTRS, "input_forget": Attr("int", 0)},
    infer=_rnn_infer(2))
def lstm(x, w, r, b=None, sequence_lens=None, initial_h=None, initial_c=None, p=None, *,
         activation_alpha, activation_beta, activations, clip, direction, hidden_size, input_forget,
         layout):
    """LSTM with gates in ONNX order (i, o, f, c), optional peepholes p = (i, o, f);
    input_forget couples the forget gate to the input gate (f = 1 − i)."""
    nd, H = _num_dir(direction), hidden_size
    xf, (h0, c0) = _rnn_prepare(x, layout, [initial_h, initial_c], nd, H)
    fns = _activation_fns(activations, activation_alpha, activation_beta, ["Sigmoid", "Tanh", "Tanh"], nd)
    wf, rf = w.astype(xf.dtype), r.astype(xf.dtype)
    bias = np.zeros((nd, 8 * H), xf.dtype) if b is None else b.astype(xf.dtype)
    peep = np.zeros((nd, 3 * H), xf.dtype) if p is None else p.astype(xf.dtype)

    def step(d, xt, states):
        h, c = states
        f, g, hfn = fns[d]
        gates = xt @ wf[d].T + h @ rf[d].T + bias[d, :4 * H] + bias[d, 4 * H:]
        pi, po, pf = peep[d, :H], peep[d, H:2 * H], peep[d, 2 * H:]
        i = f(_clip(gates[:, :H] + pi * c, clip))
        fg = 1 - i if input_forget else f(_clip(gates[:, 2 * H:3 * H] + pf * c, clip))
        cc = g(_clip(gates[:, 3 * H:], clip))
        c_new = fg * c + i * cc
        o = f(_clip(gates[:, H:2 * H] + po * c_new, clip))
        return [o * hfn(c_new), c_new]

    Y, finals = _scan_directions(xf, sequence_lens, direction, [h0, c0], step)
    return _rnn_outputs(x, Y, finals, layout)


# -- unpooling, col2im, region pooling -----------------------------------------------------

def _max_unpool_shape(xs, kernel, strides, pads):
    n = len(kernel)
    strides, pads = _ints(strides, n, 1), _ints(pads, 2 * n, 0)
    return [(d - 1) * s - (pads[i] + pads[n + i]) + k if isinstance(d, int) else UNKNOWN
            for i, (d, k, s) in enumerate(zip(xs, kernel, strides))]


def _max_unpool_infer(ctx: InferContext):
    xs = ctx.shape(0)
    out = ctx.const(2)
    if out is not None:
        return [TensorType(ctx.dtype(0), tuple(int(v) for v in out))]
    if xs is None:
        return [TensorType(ctx.dtype(0), None)]
    a = ctx.attrs
    if ctx.has(2):
        return [TensorType(ctx.dtype(0), (xs[0], xs[1]) + (UNKNOWN,) * (len(xs) - 2))]
    return [TensorType(ctx.dtype(0), (xs[0], xs[1], *_max_unpool_shape(xs[2:], a["kernel_shape"],
                                                                       a["strides"], a["pads"])))]


@op("nn.max_unpool", inputs=["x", "i", "output_shape?"], outputs=["output"],
    attrs={"kernel_shape": Attr("ints", REQUIRED), "pads": Attr("ints", ()), "strides": Attr("ints", ())},
    infer=_max_unpool_infer)
def max_unpool(x, i, output_shape=None, *, kernel_shape, pads, strides):
    """Scatter x to the flat positions ``i`` (MaxPool's indices) of a zero tensor of the
    natural unpooled shape, placed at the origin of ``output_shape`` when given."""
    natural = (*x.shape[:2], *_max_unpool_shape(x.shape[2:], kernel_shape, strides, pads))
    y = np.zeros(int(np.prod(natural)), dtype=x.dtype)
    y[i.reshape(-1)] = x.reshape(-1)
    y = y.reshape(natural)
    if output_shape is None:
        return y
    out = np.zeros(tuple(int(v) for v in output_shape), dtype=x.dtype)
    out[tuple(slice(0, min(a, b)) for a, b in zip(natural, out.shape))] = \
        y[tuple(slice(0, min(a, b)) for a, b in zip(natural, out.shape))]
    return out


def _col2im_infer(ctx: InferContext):
    xs = ctx.shape(0)
    image, block = ctx.const(1), ctx.const(2)
    if xs is None or image is None or block is None:
        return [TensorType(ctx.dtype(0), None)]
    k = int(np.prod(block))
    c = xs[1] // k if isinstance(xs[1], int) else UNKNOWN
    return [TensorType(ctx.dtype(0), (xs[0], c, *(int(v) for v in image)))]


@op("nn.col2im", inputs=["input", "image_shape", "block_shape"], outputs=["output"],
    attrs={"dilations": Attr("ints", ()), "pads": Attr("ints", ()), "strides": Attr("ints", ())},
    infer=_col2im_infer)
def col2im(input, image_shape, block_shape, *, dilations, pads, strides):
    """Sum sliding blocks [N, C·prod(block), L] back into images [N, C, *image_shape]."""
    image = [int(v) for v in image_shape]
    K = tuple(int(v) for v in block_shape)
    n = len(image)
    s, d, p = _ints(strides, n, 1), _ints(dilations, n, 1), _ints(pads, 2 * n, 0)
    blocks = tuple((image[i] + p[i] + p[n + i] - (K[i] - 1) * d[i] - 1) // s[i] + 1 for i in range(n))
    N = input.shape[0]
    C = input.shape[1] // int(np.prod(K))
    wd = _work_dtype(input.dtype)
    cols = input.astype(wd, copy=False).reshape((N, C) + K + blocks)
    buf = np.zeros((N, C) + tuple(image[i] + p[i] + p[n + i] for i in range(n)), dtype=wd)
    for tap in itertools.product(*(range(k) for k in K)):
        index = (slice(None), slice(None)) + tuple(
            slice(t * dl, t * dl + (b_ - 1) * st + 1, st) for t, dl, b_, st in zip(tap, d, blocks, s))
        buf[index] += cols[(slice(None), slice(None)) + tap]
    crop = (slice(None), slice(None)) + tuple(slice(p[i], p[i] + image[i]) for i in range(n))
    return _like(buf[crop], input)


def _roi_infer(ctx: InferContext):
    xs, rs = ctx.shape(0), ctx.shape(1)
    a = ctx.attrs
    r = rs[0] if rs is not None else UNKNOWN
    c = xs[1] if xs is not None else UNKNOWN
    return [TensorType(ctx.dtype(0), (r, c, a["output_height"], a["output_width"]))]


def _bilinear_axis(start, bin_size, pooled, grid, size):
    """Per (bin, sample): low/high indices, their weights and validity along one axis."""
    pos = start + np.arange(pooled)[:, None] * bin_size + (np.arange(grid)[None, :] + 0.5) * bin_size / grid
    valid = (pos >= -1.0) & (pos <= size)
    pos = np.maximum(pos, 0)
    low = pos.astype(np.int64)
    at_end = low >= size - 1
    low = np.where(at_end, size - 1, low)
    high = np.where(at_end, size - 1, low + 1)
    pos = np.where(at_end, low, pos)
    frac = pos - low
    return low, high, np.where(valid, 1 - frac, 0), np.where(valid, frac, 0)


@op("nn.roi_align", inputs=["x", "rois", "batch_indices"], outputs=["y"],
    attrs={"coordinate_transformation_mode": Attr("str", "half_pixel"), "mode": Attr("str", "avg"),
           "output_height": Attr("int", 1), "output_width": Attr("int", 1),
           "sampling_ratio": Attr("int", 0), "spatial_scale": Attr("float", 1.0)},
    infer=_roi_infer)
def roi_align(x, rois, batch_indices, *, coordinate_transformation_mode, mode, output_height,
              output_width, sampling_ratio, spatial_scale):
    """Bilinearly sampled average (or max) pooling of each region of interest."""
    xf = _f(x)
    H, W = x.shape[2:]
    PH, PW = output_height, output_width
    half = coordinate_transformation_mode.lower() == "half_pixel"
    offset = 0.5 if half else 0.0
    out = np.zeros((rois.shape[0], x.shape[1], PH, PW), dtype=xf.dtype)
    for n, (roi, b) in enumerate(zip(rois.astype(np.float64), batch_indices.reshape(-1))):
        x0, y0, x1, y1 = roi[:4] * spatial_scale - offset
        rw, rh = x1 - x0, y1 - y0
        if not half:
            rw, rh = max(rw, 1.0), max(rh, 1.0)
        bh, bw = rh / PH, rw / PW
        gh = sampling_ratio if sampling_ratio > 0 else int(np.ceil(rh / PH))
        gw = sampling_ratio if sampling_ratio > 0 else int(np.ceil(rw / PW))
        if gh <= 0 or gw <= 0:
            continue
        yl, yh, wyl, wyh = _bilinear_axis(y0, bh, PH, gh, H)
        xl, xh, wxl, wxh = _bilinear_axis(x0, bw, PW, gw, W)
        img = xf[int(b)]  # [C, H, W]
        corners = []
        for yi, wy in ((yl, wyl), (yh, wyh)):
            for xi, wx in ((xl, wxl), (xh, wxh)):
                vals = img[:, yi[:, :, None, None], xi[None, None, :, :]]  # [C, PH, gh, PW, gw]
                corners.append(vals * (wy[:, :, None, None] * wx[None, None, :, :]))
        if mode.lower() == "avg":
            out[n] = sum(corners).sum(axis=(2, 4)) / max(gh * gw, 1)
        else:
            out[n] = np.max(np.stack(corners), axis=0).max(axis=(2, 4))
    return _like(out, x)


@op("nn.max_roi_pool", inputs=["x", "rois"], outputs=["y"],
    attrs={"pooled_shape": Attr("ints", REQUIRED), "spatial_scale": Attr("float", 1.0)},
    infer=lambda ctx: [TensorType(ctx.dtype(0), (
        ctx.shape(1)[0] if ctx.shape(1) is not None else UNKNOWN,
        ctx.shape(0)[1] if ctx.shape(0) is not None else UNKNOWN, *ctx.attrs["pooled_shape"]))])
def max_roi_pool(x, rois, *, pooled_shape, spatial_scale):
    """Max pooling of each region [batch, x1, y1, x2, y2] (rounded to the feature grid) into
    pooled_shape bins; an empty bin gives 0."""
    H, W = x.shape[2:]
    PH, PW = pooled_shape
    out = np.zeros((rois.shape[0], x.shape[1], PH, PW), dtype=x.dtype)
    for n, roi in enumerate(rois):
        b = int(roi[0])
        x1, y1, x2, y2 = (int(np.round(v * spatial_scale)) for v in roi[1:5])
        rh, rw = max(y2 - y1 + 1, 1), max(x2 - x1 + 1, 1)
        for ph, pw in itertools.product(range(PH), range(PW)):
            hs = min(max(int(np.floor(ph * rh / PH)) + y1, 0), H)
            he = min(max(int(np.ceil((ph + 1) * rh / PH)) + y1, 0), H)
            ws = min(max(int(np.floor(pw * rw / PW)) + x1, 0), W)
            we = min(max(int(np.ceil((pw + 1) * rw / PW)) + x1, 0), W)
            if he > hs and we > ws:
                out[n, :, ph, pw] = x[b, :, hs:he, ws:we].max(axis=(1, 2))
    return out


# -- rotary embedding ----------------------------------------------------------------------

@op("nn.rotary_embedding", inputs=["x", "cos_cache", "sin_cache", "position_ids?"], outputs=["y"],
    attrs={"interleaved": Attr("int", 0), "num_heads": Attr("int", 0),
           "rotary_embedding_dim": Attr("int", 0)}, infer=same_as(0))
def rotary_embedding(x, cos_cache, sin_cache, position_ids=None, *, interleaved, num_heads,
                     rotary_embedding_dim):
    """Rotate pairs of features by position-dependent angles. x: [B, heads, S, D] or
    [B, S, heads·D]; caches [max_pos, dim/2] indexed by position_ids, or [B, S, dim/2]."""
    wd = _work_dtype(x.dtype)
    xf = x.astype(wd, copy=False)
    if x.ndim == 4:
        xf = xf.transpose(0, 2, 1, 3)
    else:
        B, S, hidden = xf.shape
        xf = xf.reshape(B, S, num_heads, hidden // num_heads)
    D = xf.shape[3]
    dim = rotary_embedding_dim or D
    cos, sin = cos_cache.astype(wd), sin_cache.astype(wd)
    if position_ids is not None:
        cos, sin = cos[position_ids], sin[position_ids]
    cos, sin = cos[:, :, None, :], sin[:, :, None, :]
    rot, rest = xf[..., :dim], xf[..., dim:]
    x1, x2 = (rot[..., 0::2], rot[..., 1::2]) if interleaved else np.split(rot, 2, axis=-1)
    real, imag = cos * x1 - sin * x2, sin * x1 + cos * x2
    rot = np.stack([real, imag], axis=-1).reshape(rot.shape) if interleaved else \
        np.concatenate([real, imag], axis=-1)
    y = np.concatenate([rot, rest], axis=-1)
    y = y.transpose(0, 2, 1, 3) if x.ndim == 4 else y.reshape(x.shape)
    return _like(y, x)


# -- attention -----------------------------------------------------------------------------

def _attention_infer(ctx: InferContext):
    dt = ctx.dtype(0)
    qs, ks, vs = ctx.shape(0), ctx.shape(1), ctx.shape(2)
    a = ctx.attrs
    if qs is None or ks is None or vs is None:
        return [TensorType(dt, None)] * 4
    past = ctx.shape(4) if ctx.has(4) else None
    if len(qs) == 4:
        B, qh, qlen = qs[0], qs[1], qs[2]
        kvh, klen, hk, hv = ks[1], ks[2], ks[3], vs[3]
        y = (B, qh, qlen, hv)
    else:
        B, qlen = qs[0], qs[1]
        qh, kvh, klen = a["q_num_heads"], a["kv_num_heads"], ks[1]
        div = lambda d, h: d // h if isinstance(d, int) and h else UNKNOWN  # noqa: E731
        hk, hv = div(ks[2], kvh), div(vs[2], kvh)
        y = (B, qlen, hv * qh if isinstance(hv, int) and qh else UNKNOWN)
    if past is not None:
        total = past[2] + klen if isinstance(past[2], int) and isinstance(klen, int) else UNKNOWN
    else:
        total = klen
    return [TensorType(dt, y), TensorType(dt, (B, kvh, total, hk)), TensorType(dt, (B, kvh, total, hv)),
            TensorType(dt, (B, qh, qlen, total))]


def _heads_first(t: np.ndarray, heads: int) -> np.ndarray:
    """[B, S, heads·D] → [B, heads, S, D]."""
    B, S, hidden = t.shape
    return t.reshape(B, S, heads, hidden // heads).transpose(0, 2, 1, 3)


def _window_bias(q_len, kv_len, offset, dtype, allowed_fn):
    """An additive (0 / −inf) bias [q, kv], or [B, 1, q, kv] for per-batch offsets."""
    i = np.arange(q_len).reshape(-1, 1)
    j = np.arange(kv_len).reshape(1, -1)
    per_batch = np.ndim(offset) > 0
    pos = i + (np.reshape(offset, (-1, 1, 1)) if per_batch else int(offset))
    bias = np.where(allowed_fn(pos, j), dtype.type(0), dtype.type(-np.inf))
    return bias.reshape(bias.shape[0], 1, q_len, kv_len) if per_batch else bias


@op("nn.attention", inputs=["q", "k", "v", "attn_mask?", "past_key?", "past_value?", "nonpad_kv_seqlen?"],
    outputs=["y", "present_key?", "present_value?", "qk_matmul_output?"],
    attrs={"is_causal": Attr("int", 0), "kv_num_heads": Attr("int", None),
           "left_window_size": Attr("int", -1), "q_num_heads": Attr("int", None),
           "qk_matmul_output_mode": Attr("int", 0), "right_window_size": Attr("int", -1),
           "scale": Attr("float", None), "softcap": Attr("float", 0.0),
           "softmax_precision": Attr("dtype", None)},
    infer=_attention_infer)
def attention(q, k, v, attn_mask=None, past_key=None, past_value=None, nonpad_kv_seqlen=None, *,
              is_causal, kv_num_heads, left_window_size, q_num_heads, qk_matmul_output_mode,
              right_window_size, scale, softcap, softmax_precision):
    """Scaled dot-product attention (ONNX Attention-25): 3-D [B, S, heads·D] or 4-D
    [B, heads, S, D] inputs, a KV cache (past → present), boolean or additive masks, causal
    and sliding-window masks aligned bottom-right, grouped-query heads, soft-capping.
    A query row with no attendable key gives zeros."""
    dt = q.dtype
    # float16 is computed in float16, step by step as ONNX's reference does (its test data
    # differs from a float32 computation by more than the tolerance); other narrow floats in float32.
    wd = dt if dt == np.float16 else _work_dtype(dt)
    Q, K, V = (t.astype(wd, copy=False) for t in (q, k, v))
    rank3 = q.ndim == 3
    if rank3:
        Q, K, V = _heads_first(Q, q_num_heads), _heads_first(K, kv_num_heads), _heads_first(V, kv_num_heads)
    if scale is None:
        scale = 1 / np.sqrt(Q.shape[3])
    s = wd.type(np.sqrt(scale))
    # The cache keeps the input dtype (present_* are outputs of q's type).
    if past_key is not None:
        K = np.concatenate([past_key.astype(wd), K], axis=2)
        V = np.concatenate([past_value.astype(wd), V], axis=2)
    present_key, present_value = K, V
    q_len, kv_len = Q.shape[2], K.shape[2]
    bias = np.zeros((q_len, kv_len), dtype=wd)
    mask = attn_mask
    if mask is not None:
        pad = kv_len - mask.shape[-1]
        if pad > 0:
            mask = np.pad(mask, [(0, 0)] * (mask.ndim - 1) + [(0, pad)],
                          constant_values=False if mask.dtype == np.bool_ else -np.inf)
        mask = np.where(mask, wd.type(0), wd.type(-np.inf)) if mask.dtype == np.bool_ else mask.astype(wd)
        bias = bias + mask
    external = past_key is None and nonpad_kv_seqlen is not None
    offset = (nonpad_kv_seqlen.reshape(-1) - q_len) if external else \
        (past_key.shape[2] if past_key is not None else 0)
    if is_causal:
        bias = bias + _window_bias(q_len, kv_len, offset, wd, lambda p, j: j <= p)
    if left_window_size >= 0 or right_window_size >= 0:
        def allowed(p, j):
            ok = np.ones(np.broadcast_shapes(np.shape(p), np.shape(j)), dtype=bool)
            if left_window_size >= 0:
                ok &= (p - j) <= left_window_size
            if right_window_size >= 0:
                ok &= (j - p) <= right_window_size
            return ok
        bias = bias + _window_bias(q_len, kv_len, offset, wd, allowed)
    if nonpad_kv_seqlen is not None:
        valid = np.arange(kv_len) < nonpad_kv_seqlen.reshape(-1, 1)
        bias = bias + np.where(valid, wd.type(0), wd.type(-np.inf)).reshape(Q.shape[0], 1, 1, kv_len)
    qh, kh = Q.shape[1], K.shape[1]
    if qh != kh and qh % kh == 0:  # grouped-query attention: each KV head serves qh/kh heads
        K, V = np.repeat(K, qh // kh, axis=1), np.repeat(V, qh // kh, axis=1)
    scores = np.matmul(Q * s, K.transpose(0, 1, 3, 2) * s)
    if softcap and softcap > 0:
        scores = np.tanh(scores / softcap) * softcap
    qk_out = scores
    with_bias = scores + bias
    if qk_matmul_output_mode == 2:
        qk_out = with_bias
    if softmax_precision is not None:
        with_bias = with_bias.astype(_work_dtype(softmax_precision.numpy))
    m = np.max(with_bias, axis=-1, keepdims=True)
    e = np.exp(with_bias - np.where(np.isneginf(m), 0, m))
    total = e.sum(axis=-1, keepdims=True)
    probs = e / np.where(total == 0, 1, total)
    dead = np.isneginf(np.max(bias, axis=-1, keepdims=True))  # rows with no attendable key
    probs = np.where(dead, 0, probs)
    if qk_matmul_output_mode == 3:
        qk_out = probs
    y = np.matmul(probs.astype(dt).astype(wd), V)
    if rank3:
        y = y.transpose(0, 2, 1, 3).reshape(y.shape[0], y.shape[2], -1)
    return (_like(y, q), _like(present_key, q), _like(present_value, q),
            _like(np.broadcast_to(qk_out, scores.shape), q))


# -- deformable and causal convolutions ------------------------------------------------------

def _bilinear_zero(img: np.ndarray, py: np.ndarray, px: np.ndarray) -> np.ndarray:
    """img [G, Cg, H, W] sampled at pixel coords py/px [G, ...] (zero outside), → [G, ..., Cg]."""
    G, Cg, H, W = img.shape
    y0, x0 = np.floor(py), np.floor(px)
    out = 0
    g = np.arange(G).reshape((G,) + (1,) * (py.ndim - 1))
    for yc, wy in ((y0, 1 - (py - y0)), (y0 + 1, py - y0)):
        for xc, wx in ((x0, 1 - (px - x0)), (x0 + 1, px - x0)):
            inside = (yc >= 0) & (yc < H) & (xc >= 0) & (xc < W)
            yi = np.clip(yc, 0, H - 1).astype(np.int64)
            xi = np.clip(xc, 0, W - 1).astype(np.int64)
            vals = img.transpose(0, 2, 3, 1)[g, yi, xi]  # [G, ..., Cg]
            out = out + vals * (wy * wx * inside)[..., None]
    return out


def _deform_infer(ctx: InferContext):
    xs, ws, os_ = ctx.shape(0), ctx.shape(1), ctx.shape(2)
    if xs is None or os_ is None:
        return [TensorType(ctx.dtype(0), None)]
    return [TensorType(ctx.dtype(0), (xs[0], ws[0] if ws is not None else UNKNOWN, *os_[2:]))]


@op("nn.deform_conv", inputs=["x", "w", "offset", "b?", "mask?"], outputs=["y"],
    attrs={"dilations": Attr("ints", ()), "group": Attr("int", 1), "kernel_shape": Attr("ints", ()),
           "offset_group": Attr("int", 1), "pads": Attr("ints", ()), "strides": Attr("ints", ())},
    infer=_deform_infer)
def deform_conv(x, w, offset, b=None, mask=None, *, dilations, group, kernel_shape, offset_group, pads,
                strides):
    """2-D deformable convolution: each kernel tap samples x bilinearly (zero outside) at its
    regular position plus a learned offset, optionally scaled by a mask, then a grouped conv."""
    if x.ndim != 4:
        raise ValueError(f"DeformConv is implemented for 2-D images (rank-4 x), not rank {x.ndim}")
    wd = _work_dtype(x.dtype)
    xf, wf = x.astype(wd, copy=False), w.astype(wd, copy=False)
    N, C, H, W = x.shape
    M = w.shape[0]
    KH, KW = kernel_shape or w.shape[2:]
    sh, sw = _ints(strides, 2, 1)
    dh, dw = _ints(dilations, 2, 1)
    p = _ints(pads, 4, 0)
    OH, OW = offset.shape[2:]
    OG, G = int(offset_group), int(group)
    off = offset.astype(wd).reshape(N, OG, KH, KW, 2, OH, OW)
    msk = np.ones((N, OG, KH, KW, OH, OW), wd) if mask is None else mask.astype(wd).reshape(N, OG, KH, KW, OH, OW)
    base_y = (-p[0] + sh * np.arange(OH)).reshape(1, 1, OH, 1) + (dh * np.arange(KH)).reshape(KH, 1, 1, 1)
    base_x = (-p[1] + sw * np.arange(OW)).reshape(1, 1, 1, OW) + (dw * np.arange(KW)).reshape(1, KW, 1, 1)
    cols = np.empty((N, C, KH, KW, OH, OW), dtype=wd)
    for n in range(N):
        py = base_y[None] + off[n, :, :, :, 0]  # [OG, KH, KW, OH, OW]
        px = base_x[None] + off[n, :, :, :, 1]
        sampled = _bilinear_zero(xf[n].reshape(OG, C // OG, H, W), py, px)  # [OG, KH, KW, OH, OW, C/OG]
        sampled = sampled * msk[n][..., None]
        cols[n] = sampled.transpose(0, 5, 1, 2, 3, 4).reshape(C, KH, KW, OH, OW)
    Cg, Mg = C // G, M // G
    cm = cols.reshape(N, G, Cg * KH * KW, OH * OW).transpose(1, 0, 3, 2).reshape(G, N * OH * OW, Cg * KH * KW)
    y = np.matmul(cm, wf.reshape(G, Mg, Cg * KH * KW).transpose(0, 2, 1))  # [G, N·O, Mg]
    y = y.reshape(G, N, OH, OW, Mg).transpose(1, 0, 4, 2, 3).reshape(N, M, OH, OW)
    if b is not None:
        y = y + b.astype(wd).reshape(1, M, 1, 1)
    return _like(y, x)


def _causal_conv_infer(ctx: InferContext):
    xs, ws = ctx.shape(0), ctx.shape(1)
    dt = ctx.dtype(0)
    if xs is None:
        return [TensorType(dt, None)] * 2
    k = ws[2] if ws is not None and isinstance(ws[2], int) else None
    return [TensorType(dt, xs), TensorType(dt, (xs[0], xs[1], k - 1 if k is not None else UNKNOWN))]


@op("nn.causal_conv_with_state", inputs=["input", "weight", "bias?", "past_state?"],
    outputs=["output", "present_state?"], attrs={"activation": Attr("str", "none")},
    infer=_causal_conv_infer)
def causal_conv_with_state(input, weight, bias=None, past_state=None, *, activation):
    """Depthwise causal 1-D conv over [B, C, L] whose left context is ``past_state`` [B, C, k−1]
    (zeros when omitted); optional SiLU; also returns the last k−1 steps as the new state."""
    if activation not in ("none", "silu", "swish"):
        raise ValueError(f"activation must be none, silu or swish, not {activation!r}")
    B, C, _ = input.shape
    k = weight.shape[2]
    pad = np.zeros((B, C, k - 1), input.dtype) if past_state is None else past_state.astype(input.dtype)
    padded = np.concatenate([pad, input], axis=2)
    y = conv(padded, weight, bias, auto_pad="NOTSET", dilations=(1,), group=C, kernel_shape=(k,),
             pads=(0, 0), strides=(1,))
    if activation != "none":
        yf = y.astype(np.float32)
        y = (yf * _sigmoid(yf)).astype(input.dtype)
    return y, padded[:, :, padded.shape[2] - (k - 1):]


# -- linear attention ----------------------------------------------------------------------

def _linear_attention_infer(ctx: InferContext):
    qs, vs = ctx.shape(0), ctx.shape(2)
    a = ctx.attrs
    dt = ctx.dtype(0)
    if qs is None or vs is None:
        return [TensorType(dt, None)] * 2
    qh, kvh = a["q_num_heads"], a["kv_num_heads"]
    dk = qs[2] // qh if isinstance(qs[2], int) else UNKNOWN
    dv = vs[2] // kvh if isinstance(vs[2], int) else UNKNOWN
    y = TensorType(dt, (qs[0], qs[1], qh * dv if isinstance(dv, int) else UNKNOWN))
    state_dt = ctx.dtype(3) if ctx.has(3) else dt
    return [y, TensorType(state_dt, (qs[0], kvh, dk, dv))]


@op("nn.linear_attention", inputs=["query", "key", "value", "past_state?", "decay?", "beta?"],
    outputs=["output", "present_state?"],
    attrs={"chunk_size": Attr("int", 64), "kv_num_heads": Attr("int", REQUIRED),
           "q_num_heads": Attr("int", REQUIRED), "scale": Attr("float", 0.0),
           "update_rule": Attr("str", "gated_delta")},
    infer=_linear_attention_infer)
def linear_attention(query, key, value, past_state=None, decay=None, beta=None, *, chunk_size,
                     kv_num_heads, q_num_heads, scale, update_rule):
    """Recurrent linear attention over [B, T, heads·D] inputs with a [B, H_kv, d_k, d_v] state:
    update_rule linear, gated (decay), delta (beta) or gated_delta; computed in float32.
    ``chunk_size`` is a tuning hint only."""
    if update_rule not in ("linear", "gated", "delta", "gated_delta"):
        raise ValueError(f"update_rule must be linear, gated, delta or gated_delta, not {update_rule!r}")
    gating, delta = update_rule in ("gated", "gated_delta"), update_rule in ("delta", "gated_delta")
    if gating != (decay is not None) or delta != (beta is not None):
        raise ValueError(f"update_rule {update_rule!r} needs decay={gating} and beta={delta}")
    B, T, _ = query.shape
    q4 = _heads_first(query.astype(np.float32), q_num_heads)
    k4 = _heads_first(key.astype(np.float32), kv_num_heads)
    v4 = _heads_first(value.astype(np.float32), kv_num_heads)
    dk, dv = q4.shape[3], v4.shape[3]
    if gating:
        g4 = decay.astype(np.float32)
        g4 = g4.reshape(B, T, kv_num_heads, 1).transpose(0, 2, 1, 3) if g4.shape[-1] == kv_num_heads \
            else _heads_first(g4, kv_num_heads)
    if delta:
        b4 = beta.astype(np.float32).reshape(B, T, beta.shape[-1], 1).transpose(0, 2, 1, 3)
    state = np.zeros((B, kv_num_heads, dk, dv), np.float32) if past_state is None else \
        past_state.astype(np.float32).copy()
    s = 1.0 / np.sqrt(dk) if not scale else float(scale)
    group = q_num_heads // kv_num_heads
    out = np.zeros((B, q_num_heads, T, dv), np.float32)
    for t in range(T):
        kt, vt = k4[:, :, t], v4[:, :, t]
        if gating:
            state = state * np.exp(g4[:, :, t])[..., None]
        if delta:
            vt = b4[:, :, t] * (vt - np.einsum("bhdm,bhd->bhm", state, kt))
        state = state + kt[..., :, None] * vt[..., None, :]
        read = state if group == 1 else np.repeat(state, group, axis=1)
        out[:, :, t] = s * np.einsum("bhd,bhdm->bhm", q4[:, :, t], read)
    y = out.transpose(0, 2, 1, 3).reshape(B, T, q_num_heads * dv).astype(query.dtype)
    return y, state.astype(query.dtype if past_state is None else past_state.dtype)


def _flex_attention_infer(ctx: InferContext):
    qs, vs = ctx.shape(0), ctx.shape(2)
    shape = None if qs is None or vs is None else (qs[0], qs[1], qs[2], vs[3])
    return [TensorType(ctx.dtype(2), shape)]


@op("nn.flex_attention", inputs=["q", "k", "v"], outputs=["y"],
    attrs={"prob_mod": Attr("graph", None), "scale": Attr("float", None),
           "score_mod": Attr("graph", None), "softmax_precision": Attr("dtype", None)},
    infer=_flex_attention_infer, needs_runner=True)
def flex_attention(q, k, v, *, prob_mod, scale, score_mod, softmax_precision, run_graph):
    """Attention over rank-4 inputs whose scores (after Q·Kᵀ·scale) and probabilities (after
    softmax) pass through the optional one-input subgraphs ``score_mod`` and ``prob_mod``.
    Softmax runs in ``softmax_precision`` (float32 for narrower floats by default)."""
    heads, kv_heads = q.shape[1], k.shape[1]
    if heads != kv_heads:
        k, v = np.repeat(k, heads // kv_heads, axis=1), np.repeat(v, heads // kv_heads, axis=1)
    if scale is None:
        scale = 1.0 / np.sqrt(q.shape[3])
    s = np.array(np.sqrt(np.float32(scale)), dtype=q.dtype)
    scores = np.matmul(q * s, np.swapaxes(k * s, -1, -2))
    cd = softmax_precision.numpy if softmax_precision is not None else (
        q.dtype if q.dtype in (np.float32, np.float64) else np.dtype(np.float32))
    scores = scores.astype(cd)
    if score_mod is not None:
        scores = np.asarray(run_graph(score_mod, [scores])[0], dtype=cd)
    e = np.exp(scores - np.max(scores, axis=-1, keepdims=True))
    probs = e / np.sum(e, axis=-1, keepdims=True)
    if prob_mod is not None:
        probs = np.asarray(run_graph(prob_mod, [probs])[0], dtype=cd)
    return np.matmul(probs, v.astype(cd)).astype(v.dtype)
