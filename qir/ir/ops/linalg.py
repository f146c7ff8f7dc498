"""Linear-algebra and signal ops: MatMul, Gemm, Einsum, Det, MatMulInteger, DFT, STFT, the
Hann/Hamming/Blackman windows and MelWeightMatrix.

Each op has the semantics of the newest ONNX version of the op of the same name, with every
attribute explicit; inputs that were attributes in older opsets (DFT's axis) are inputs here
(qir/frontends/onnx/ops/linalg.py upgrades older forms). Low-precision floats (float16,
bfloat16, float8) are computed in float32 and rounded once at the end.
"""

from __future__ import annotations

import collections

import numpy as np

from qir.ir.opdef import Attr, op
from qir.ir.ops.infer import broadcast_shapes, const_ints, normalize_axis
from qir.ir.types import Dim, DType, TensorType

# -- helpers -------------------------------------------------------------------------------

_LOW_PRECISION = {np.dtype(np.float16)} | {DType.parse(s).numpy for s in (
    "bf16", "f8e4m3fn", "f8e4m3fnuz", "f8e5m2", "f8e5m2fnuz")}


def _widen(x: np.ndarray) -> np.ndarray:
    """``x`` in float32 when it is a low-precision float, else unchanged."""
    return x.astype(np.float32) if x.dtype in _LOW_PRECISION else x


def _same_dim(a: Dim, b: Dim) -> Dim:
    """One of two dims that must agree; a known int wins over a symbol."""
    if isinstance(a, int) and isinstance(b, int) and a != b:
        raise ValueError(f"dims {a} and {b} do not match")
    return a if isinstance(a, int) else b


# -- MatMul --------------------------------------------------------------------------------

def matmul_shape(a, b):
    """The shape of ``numpy.matmul`` of arrays shaped ``a`` and ``b`` (dims may be symbols)."""
    if a is None or b is None:
        return None
    if not a or not b:
        raise ValueError("MatMul inputs must have rank >= 1")
    lhs = (1, *a) if len(a) == 1 else tuple(a)
    rhs = (*b, 1) if len(b) == 1 else tuple(b)
    _same_dim(lhs[-1], rhs[-2])
    out = [*broadcast_shapes(lhs[:-2], rhs[:-2]), lhs[-2], rhs[-1]]
    # A 1-D operand's added dim is removed again, as numpy does.
    if len(b) == 1:
        out.pop(-1)
    if len(a) == 1:
        out.pop(-2 if len(b) != 1 else -1)
    return tuple(out)


def _infer_matmul(ctx):
    return [TensorType(ctx.dtype(0), matmul_shape(ctx.shape(0), ctx.shape(1)))]


@op("linalg.matmul", inputs=["A", "B"], outputs=["Y"], infer=_infer_matmul)
def matmul(a, b):
    """Matrix product with numpy.matmul semantics (batch broadcasting, 1-D promotion)."""
    return np.matmul(_widen(a), _widen(b)).astype(a.dtype, copy=False)


# -- Gemm ----------------------------------------------------------------------------------

def _infer_gemm(ctx):
    a, b = ctx.shape(0), ctx.shape(1)
    if a is None or b is None:
        return [TensorType(ctx.dtype(0), None)]
    if len(a) != 2 or len(b) != 2:
        raise ValueError(f"Gemm takes 2-D A and B, got shapes {a} and {b}")
    (m, ka), (kb, n) = a[::-1] if ctx.attrs["transA"] else a, b[::-1] if ctx.attrs["transB"] else b
    _same_dim(ka, kb)
    if ctx.has(2) and ctx.shape(2) is not None and len(ctx.shape(2)) > 2:
        raise ValueError(f"C of shape {ctx.shape(2)} does not broadcast to the output's {(m, n)}")
    if ctx.has(2):
        broadcast_shapes((m, n), ctx.shape(2))  # raises when C cannot broadcast
    return [TensorType(ctx.dtype(0), (m, n))]


def _scaled(x: np.ndarray, factor: float) -> np.ndarray:
    """``x · factor`` in x's float type (float64 for ints); a factor of exactly 1 is skipped so
    that integer results stay exact."""
    if factor == 1.0:
        return x
    return x * np.asarray(factor, dtype=x.dtype if x.dtype.kind == "f" else np.float64)


@op("linalg.gemm", inputs=["A", "B", "C?"], outputs=["Y"], infer=_infer_gemm, attrs={
    "alpha": Attr("float", 1.0, "scale of A·B"),
    "beta": Attr("float", 1.0, "scale of C"),
    "transA": Attr("int", 0, "transpose A first"),
    "transB": Attr("int", 0, "transpose B first"),
})
def gemm(a, b, c=None, *, alpha, beta, transA, transB):  # noqa: N803  (ONNX's names)
    """Y = alpha · A' · B' + beta · C, with C broadcast to [M, N] (optional)."""
    lhs = _widen(a.T if transA else a)
    rhs = _widen(b.T if transB else b)
    y = _scaled(lhs @ rhs, alpha)
    if c is not None:
        y = y + _scaled(_widen(c), beta)
    return np.asarray(y).astype(a.dtype, copy=False)


# -- Einsum --------------------------------------------------------------------------------

def _einsum_terms(equation: str, n_inputs: int) -> tuple[list[str], str]:
    """Input terms and the output term of an einsum equation (implicit form made explicit)."""
    equation = equation.replace(" ", "")
    lhs, arrow, rhs = equation.partition("->")
    terms = lhs.split(",")
    if len(terms) != n_inputs:
        raise ValueError(f"equation {equation!r} has {len(terms)} input terms for {n_inputs} inputs")
    if not arrow:
        counts = collections.Counter(c for c in lhs if c.isalpha())
        # Implicit output: letters seen once, in ASCII order, after the broadcast (ellipsis) dims.
        rhs = ("..." if "..." in lhs else "") + "".join(sorted(c for c, n in counts.items() if n == 1))
    return terms, rhs


def einsum_shape(equation: str, shapes) -> tuple[Dim, ...] | None:
    """The output shape of an einsum, or None when an input shape is unknown."""
    if any(s is None for s in shapes):
        return None
    terms, rhs = _einsum_terms(equation, len(shapes))
    dims: dict[str, Dim] = {}
    ellipses = []
    for term, shape in zip(terms, shapes):
        pre, dots, post = term.partition("...")
        n_ell = len(shape) - len(pre) - len(post) if dots else 0
        if n_ell < 0 or (not dots and len(term) != len(shape)):
            raise ValueError(f"term {term!r} does not fit an input of rank {len(shape)}")
        if dots:
            ellipses.append(tuple(shape[len(pre):len(pre) + n_ell]))
        for letter, dim in zip(pre + post, tuple(shape[:len(pre)]) + tuple(shape[len(pre) + n_ell:])):
            old = dims.get(letter, 1)
            # A size-1 dim broadcasts against the letter's other occurrences, as in numpy.
            dims[letter] = dim if old == 1 else old if dim == 1 else _same_dim(old, dim)
    ell = broadcast_shapes(*ellipses) if ellipses else ()
    pre, dots, post = rhs.partition("...")
    return tuple([dims[c] for c in pre] + (list(ell) if dots else []) + [dims[c] for c in post])


def _infer_einsum(ctx):
    shapes = [ctx.shape(i) for i in range(len(ctx))]
    return [TensorType(ctx.dtype(0), einsum_shape(ctx.attrs["equation"], shapes))]


@op("linalg.einsum", inputs=["Inputs*"], outputs=["Output"], infer=_infer_einsum,
    attrs={"equation": Attr("str", doc="Einstein summation, e.g. 'bij,bjk->bik'")})
def einsum(*inputs, equation):
    """Einstein summation over the inputs (numpy.einsum semantics, ONNX's implicit form)."""
    terms, rhs = _einsum_terms(equation, len(inputs))
    result = np.einsum(",".join(terms) + "->" + rhs, *[_widen(x) for x in inputs])
    return np.asarray(result).astype(inputs[0].dtype, copy=False)


# -- Det -----------------------------------------------------------------------------------

def _infer_det(ctx):
    shape = ctx.shape(0)
    return [TensorType(ctx.dtype(0), None if shape is None else tuple(shape[:-2]))]


@op("linalg.det", inputs=["X"], outputs=["Y"], infer=_infer_det)
def det(x):
    """Determinant of each square matrix in the last two dims of ``x``."""
    return np.asarray(np.linalg.det(_widen(x))).astype(x.dtype, copy=False)


# -- MatMulInteger -------------------------------------------------------------------------

def _infer_matmul_integer(ctx):
    return [TensorType(DType.INT32, matmul_shape(ctx.shape(0), ctx.shape(1)))]


@op("linalg.matmul_integer", inputs=["A", "B", "a_zero_point?", "b_zero_point?"], outputs=["Y"],
    infer=_infer_matmul_integer)
def matmul_integer(a, b, a_zero_point=None, b_zero_point=None):
    """(A − a_zero_point) · (B − b_zero_point) in int32.

    a_zero_point is a scalar or one per row of A (1-D of size M); b_zero_point a scalar or one
    per column of B (1-D of size N).
    """
    lhs = a.astype(np.int64)
    rhs = b.astype(np.int64)
    if a_zero_point is not None:
        zp = np.asarray(a_zero_point, dtype=np.int64)
        lhs = lhs - (zp.reshape(-1, 1) if zp.ndim == 1 and a.ndim > 1 else zp)
    if b_zero_point is not None:
        rhs = rhs - np.asarray(b_zero_point, dtype=np.int64)
    return np.matmul(lhs, rhs).astype(np.int32)


# -- DFT -----------------------------------------------------------------------------------

def _scalar(x, default=None):
    return default if x is None else int(np.asarray(x).reshape(-1)[0])


def _infer_dft(ctx):
    t = ctx.type(0)
    shape = t.shape
    axis = const_ints(ctx, 2) if ctx.has(2) else [-2]
    length = const_ints(ctx, 1) if ctx.has(1) else []
    if shape is None or axis is None or length is None:
        return [TensorType(t.dtype, None)]
    axis = normalize_axis(axis[0], len(shape))
    n = shape[axis]
    inverse, onesided = ctx.attrs["inverse"], ctx.attrs["onesided"]
    if length:
        n = length[0]
    elif inverse and onesided:
        n = 2 * (n - 1) if isinstance(n, int) else None
    if n is None:
        return [TensorType(t.dtype, None)]
    if onesided and not inverse:
        n = n // 2 + 1 if isinstance(n, int) else None
        if n is None:
            return [TensorType(t.dtype, None)]
    out = list(shape)
    out[axis] = n
    out[-1] = 1 if inverse and onesided else 2
    return [TensorType(t.dtype, tuple(out))]


def _complex_signal(x: np.ndarray) -> np.ndarray:
    """The complex signal held in the last dim of ``x`` (size 1: real; size 2: real, imag).

    float64 signals are transformed in complex128, all others in complex64 (numpy's FFT keeps
    single precision, which is what ONNX's expected outputs were computed with).
    """
    ctype = np.complex128 if x.dtype == np.float64 else np.complex64
    x = x.astype(np.float64 if x.dtype == np.float64 else np.float32)
    if x.shape[-1] == 1:
        return x[..., 0].astype(ctype)
    return (x[..., 0] + 1j * x[..., 1]).astype(ctype)


def _real_pair(z: np.ndarray) -> np.ndarray:
    return np.stack([z.real, z.imag], axis=-1)


@op("linalg.dft", inputs=["input", "dft_length?", "axis?"], outputs=["output"], infer=_infer_dft,
    attrs={"inverse": Attr("int", 0), "onesided": Attr("int", 0)})
def dft(x, dft_length=None, axis=None, *, inverse, onesided):
    """Discrete Fourier transform along ``axis`` (default -2) of a real or complex signal.

    The last dim holds the real part (size 1) or real and imaginary parts (size 2). onesided
    forward transforms keep the first n//2+1 bins; inverse onesided is the inverse real FFT.
    """
    axis = normalize_axis(_scalar(axis, -2), x.ndim)
    if axis == x.ndim - 1:
        raise ValueError("DFT axis cannot be the last (real/imaginary) dim")
    signal = _complex_signal(x)
    n = _scalar(dft_length)
    if n is None:
        n = 2 * (x.shape[axis] - 1) if inverse and onesided else x.shape[axis]
    if inverse and onesided:
        out = np.fft.irfft(signal, n=n, axis=axis)[..., np.newaxis]
    elif inverse:
        out = _real_pair(np.fft.ifft(signal, n=n, axis=axis))
    else:
        spectrum = np.fft.fft(signal, n=n, axis=axis)
        if onesided:
            spectrum = np.take(spectrum, np.arange(n // 2 + 1), axis=axis)
        out = _real_pair(spectrum)
    return out.astype(x.dtype)


# -- STFT ----------------------------------------------------------------------------------

def _infer_stft(ctx):
    t = ctx.type(0)
    shape, step = t.shape, const_ints(ctx, 1)
    length = const_ints(ctx, 3) if ctx.has(3) else None
    if length is None and ctx.has(2) and ctx.shape(2) is not None:
        length = [ctx.shape(2)[0]]
    if shape is None or step is None or length is None or not isinstance(shape[1], int) \
            or not isinstance(length[0], int):
        return [TensorType(t.dtype, None)]
    frames = 1 + (shape[1] - length[0]) // step[0]
    bins = length[0] // 2 + 1 if ctx.attrs["onesided"] else length[0]
    return [TensorType(t.dtype, (shape[0], frames, bins, 2))]


@op("linalg.stft", inputs=["signal", "frame_step", "window?", "frame_length?"], outputs=["output"],
    infer=_infer_stft, attrs={"onesided": Attr("int", 1, "keep only the first n//2+1 bins")})
def stft(signal, frame_step, window=None, frame_length=None, *, onesided):
    """Short-time Fourier transform of [batch, length, 1|2] signals → [batch, frames, bins, 2]."""
    step = _scalar(frame_step)
    length = _scalar(frame_length)
    if length is None:
        length = window.shape[0] if window is not None else signal.shape[1]
    if window is not None and window.shape[0] != length:
        raise ValueError(f"window of size {window.shape[0]} does not match frame_length {length}")
    z = _complex_signal(signal)  # [batch, length]
    frames = 1 + (z.shape[1] - length) // step
    starts = np.arange(frames) * step
    windows = z[:, starts[:, None] + np.arange(length)[None, :]]  # [batch, frames, length]
    if window is not None:
        windows = windows * _widen(window).astype(windows.real.dtype)
    spectrum = np.fft.fft(windows, n=length, axis=-1)
    if onesided:
        spectrum = spectrum[..., : length // 2 + 1]
    return _real_pair(spectrum).astype(signal.dtype)


# -- windows -------------------------------------------------------------------------------

def _infer_window(ctx):
    size = const_ints(ctx, 0)
    return [TensorType(ctx.attrs["output_datatype"], None if size is None else (size[0],))]


_WINDOW_ATTRS = {
    "output_datatype": Attr("dtype", DType.FLOAT32, "element type of the window"),
    "periodic": Attr("int", 1, "periodic (1, for spectral analysis) or symmetric (0) window"),
}


def _cosine_window(size, periodic: int, coefficients: tuple[float, ...], dtype: DType) -> np.ndarray:
    """sum_k (-1)^k a_k cos(2πkn/N), N = size (periodic) or size - 1 (symmetric)."""
    size = _scalar(size)
    denominator = size if periodic else size - 1
    n = np.arange(size, dtype=np.float64)
    window = np.zeros(size, dtype=np.float64)
    for k, a in enumerate(coefficients):
        window += (-1) ** k * a * np.cos(2 * np.pi * k * n / denominator)
    return window.astype(dtype.numpy)


@op("linalg.hann_window", inputs=["size"], outputs=["output"], attrs=_WINDOW_ATTRS, infer=_infer_window)
def hann_window(size, *, output_datatype, periodic):
    """Hann window: 0.5 − 0.5·cos(2πn/N)."""
    return _cosine_window(size, periodic, (0.5, 0.5), output_datatype)


@op("linalg.hamming_window", inputs=["size"], outputs=["output"], attrs=_WINDOW_ATTRS, infer=_infer_window)
def hamming_window(size, *, output_datatype, periodic):
    """Hamming window: 25/46 − 21/46·cos(2πn/N)."""
    return _cosine_window(size, periodic, (25 / 46, 21 / 46), output_datatype)


@op("linalg.blackman_window", inputs=["size"], outputs=["output"], attrs=_WINDOW_ATTRS, infer=_infer_window)
def blackman_window(size, *, output_datatype, periodic):
    """Blackman window: 0.42 − 0.5·cos(2πn/N) + 0.08·cos(4πn/N)."""
    return _cosine_window(size, periodic, (0.42, 0.5, 0.08), output_datatype)


# -- MelWeightMatrix -----------------------------------------------------------------------

def _infer_mel(ctx):
    bins, length = const_ints(ctx, 0), const_ints(ctx, 1)
    shape = None if bins is None or length is None else (length[0] // 2 + 1, bins[0])
    return [TensorType(ctx.attrs["output_datatype"], shape)]


@op("linalg.mel_weight_matrix", outputs=["output"], infer=_infer_mel,
    inputs=["num_mel_bins", "dft_length", "sample_rate", "lower_edge_hertz", "upper_edge_hertz"],
    attrs={"output_datatype": Attr("dtype", DType.FLOAT32, "element type of the matrix")})
def mel_weight_matrix(num_mel_bins, dft_length, sample_rate, lower_edge_hertz, upper_edge_hertz, *,
                      output_datatype):
    """[dft_length//2+1, num_mel_bins] triangular filters mapping linear frequency bins to mel bands.

    Follows ONNX's reference computation step by step (in the inputs' own dtypes), because the
    integer bin edges it floors to are sensitive to rounding.
    """
    num_mel_bins, dft_length, sample_rate, lower, upper = (
        np.asarray(v).reshape(())[()] for v in
        (num_mel_bins, dft_length, sample_rate, lower_edge_hertz, upper_edge_hertz))
    spectrogram_bins = int(dft_length) // 2 + 1
    edges = np.arange(0, int(num_mel_bins) + 2)
    low_mel = 2595 * np.log1p(lower / 700) / np.log(10)
    high_mel = 2595 * np.log1p(upper / 700) / np.log(10)
    mel_step = (high_mel - low_mel) / edges.shape[0]
    hertz = 700 * np.expm1((edges * mel_step + low_mel) / 2595 * np.log(10))
    edges = (((dft_length + 1) * hertz) // sample_rate).astype(np.int64)
    out = np.zeros((spectrogram_bins, int(num_mel_bins)), dtype=np.float64)
    for i in range(int(num_mel_bins)):
        left, center, right = int(edges[i]), int(edges[i + 1]), int(edges[i + 2])
        if center == left:
            out[center, i] = 1
        else:
            out[left:center + 1, i] = (np.arange(left, center + 1) - left) / (center - left)
        if right > center:
            out[center:right, i] = (right - np.arange(center, right)) / (right - center)
    return out.astype(output_datatype.numpy)
