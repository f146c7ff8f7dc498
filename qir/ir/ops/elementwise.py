"""The elementwise op family: unary math, binary arithmetic with numpy broadcasting,
comparisons, logic, bitwise ops, variadic Max/Min/Sum/Mean, Where, Clip, Cast/CastLike
and the string ops (StringConcat, RegexFullMatch, StringNormalizer, StringSplit).

Every op has the semantics of the newest ONNX version of the op of the same name; the ONNX
converter upgrades older forms (legacy ``broadcast``/``axis`` attributes, Clip bounds given as
attributes, Cast's ``to`` given as a string).

Ops are declared through small tables (name → numpy function), not one function per op, since
most differ only in the function they apply.
"""

from __future__ import annotations

import math
import re
from typing import Callable

import ml_dtypes
import numpy as np

from qir.ir.opdef import REQUIRED, Attr, InferContext, op
from qir.ir.ops.infer import broadcast, broadcast_shapes, same_as
from qir.ir.types import DType, TensorType, Type

# -- shared helpers --------------------------------------------------------------------------


def _same_dtypes(*indices: int) -> Callable[[InferContext], None]:
    """A verify hook: the inputs at ``indices`` (all present ones when empty) share one dtype."""

    def verify(ctx: InferContext) -> None:
        idx = indices or tuple(range(len(ctx)))
        dtypes = {ctx.dtype(i) for i in idx if ctx.has(i) and isinstance(ctx.input_types[i], TensorType)}
        if len(dtypes) > 1:
            names = ", ".join(sorted(d.value for d in dtypes))
            raise ctx.fail(f"inputs must share one dtype, got {names}; insert a Cast")

    return verify


def _errstate(fn: Callable) -> Callable:
    """Run ``fn`` with numpy's floating-point warnings silenced (inf/nan are valid results)."""

    def wrapped(*args, **kwargs):
        with np.errstate(all="ignore"):
            return fn(*args, **kwargs)

    wrapped.__name__ = getattr(fn, "__name__", "kernel")
    wrapped.__doc__ = fn.__doc__
    wrapped.__module__ = __name__
    return wrapped


def _keep_dtype(fn: Callable) -> Callable[[np.ndarray], np.ndarray]:
    """A unary kernel that returns ``fn(x)`` in x's dtype (numpy may promote exotic floats)."""

    def kernel(x):
        with np.errstate(all="ignore"):
            return np.asarray(fn(x)).astype(x.dtype, copy=False)

    return kernel


def _erf(x: np.ndarray) -> np.ndarray:
    """The error function, computed in float64 (numpy has no erf ufunc)."""
    return np.vectorize(math.erf, otypes=[np.float64])(x.astype(np.float64)) if x.size else x.astype(np.float64)


def _reciprocal(x: np.ndarray) -> np.ndarray:
    return np.divide(np.ones((), dtype=x.dtype), x)


# -- unary ops -------------------------------------------------------------------------------

#: qir op name (without family) → numpy function; the output has the input's type.
UNARY: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "abs": np.abs, "neg": np.negative, "exp": np.exp, "log": np.log, "sqrt": np.sqrt,
    "reciprocal": _reciprocal, "floor": np.floor, "ceil": np.ceil,
    "round": np.round,  # numpy rounds half to even, as ONNX Round does
    "sign": np.sign, "erf": _erf, "sin": np.sin, "cos": np.cos, "tan": np.tan,
    "asin": np.arcsin, "acos": np.arccos, "atan": np.arctan, "sinh": np.sinh, "cosh": np.cosh,
    "asinh": np.arcsinh, "acosh": np.arccosh, "atanh": np.arctanh,
    "not": np.logical_not, "bitwise_not": np.invert,
}


def _register_unary(name: str, fn: Callable) -> None:
    op(f"elementwise.{name}", inputs=["x"], outputs=["y"], infer=same_as(0),
       doc=f"y = {getattr(fn, '__name__', name)}(x), elementwise (ONNX semantics).")(_keep_dtype(fn))


for _name, _fn in UNARY.items():
    _register_unary(_name, _fn)


@op("elementwise.is_nan", inputs=["x"], outputs=["y"], infer=lambda ctx: [TensorType(DType.BOOL, ctx.shape(0))])
def is_nan(x):
    """True where x is NaN."""
    return np.isnan(_standard(x))


@op("elementwise.is_inf", inputs=["x"], outputs=["y"],
    attrs={"detect_negative": Attr("int", 1), "detect_positive": Attr("int", 1)},
    infer=lambda ctx: [TensorType(DType.BOOL, ctx.shape(0))])
def is_inf(x, detect_negative=1, detect_positive=1):
    """True where x is +inf (when detect_positive) or -inf (when detect_negative)."""
    x = _standard(x)
    pos = np.isposinf(x) if detect_positive else np.zeros(x.shape, bool)
    neg = np.isneginf(x) if detect_negative else np.zeros(x.shape, bool)
    return pos | neg


# -- binary ops ------------------------------------------------------------------------------


def _div(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Division; integer division truncates toward zero, as C does (and ONNX Div)."""
    if a.dtype.kind not in "iu":
        return np.divide(a, b)
    safe = np.where(b == 0, 1, b).astype(b.dtype)
    q = a // safe
    if a.dtype.kind == "i":
        # numpy floors; C truncates: step back toward zero where the signs differ and a remainder exists.
        q = q + ((a % safe != 0) & ((a < 0) != (safe < 0))).astype(q.dtype)
    return np.where(b == 0, 0, q).astype(a.dtype)


def _logical(fn):
    return lambda a, b: fn(a.astype(bool), b.astype(bool))


def _equal(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.asarray(a == b, dtype=bool) if a.dtype == object or b.dtype == object else np.equal(a, b)


#: Binary ops whose inputs share a dtype and whose output has it too.
ARITHMETIC: dict[str, Callable] = {
    "add": np.add, "sub": np.subtract, "mul": np.multiply, "div": _div,
    "bitwise_and": np.bitwise_and, "bitwise_or": np.bitwise_or, "bitwise_xor": np.bitwise_xor,
}
#: Binary ops with a bool output.
PREDICATES: dict[str, Callable] = {
    "equal": _equal, "less": np.less, "greater": np.greater, "less_or_equal": np.less_equal,
    "greater_or_equal": np.greater_equal,
    "and": _logical(np.logical_and), "or": _logical(np.logical_or), "xor": _logical(np.logical_xor),
}


def _arith_kernel(fn: Callable) -> Callable:
    def kernel(a, b):
        with np.errstate(all="ignore"):
            return np.asarray(fn(a, b)).astype(a.dtype, copy=False)

    return kernel


def _predicate_kernel(fn: Callable) -> Callable:
    def kernel(a, b):
        with np.errstate(all="ignore"):
            return np.asarray(fn(a, b), dtype=bool)

    return kernel


for _name, _fn in ARITHMETIC.items():
    op(f"elementwise.{_name}", inputs=["a", "b"], outputs=["c"], infer=broadcast(0), verify=_same_dtypes(),
       doc=f"c = {_name}(a, b) with numpy broadcasting.")(_arith_kernel(_fn))
for _name, _fn in PREDICATES.items():
    op(f"elementwise.{_name}", inputs=["a", "b"], outputs=["c"], infer=broadcast(0, DType.BOOL),
       verify=_same_dtypes(), doc=f"c = {_name}(a, b) with numpy broadcasting; bool output.")(_predicate_kernel(_fn))


@op("elementwise.pow", inputs=["x", "y"], outputs=["z"], infer=broadcast(0))
@_errstate
def pow_(x, y):
    """z = x ** y; the exponent may have another dtype, the result has x's dtype."""
    if x.dtype.kind in "iu" and y.dtype.kind in "iu" and not np.any(y < 0):
        return np.power(x, y.astype(x.dtype))
    if x.dtype == y.dtype:
        return np.power(x, y)
    # Mixed dtypes: compute wide, then give the result x's dtype (ONNX Pow-12+).
    return np.power(x.astype(np.float64), y.astype(np.float64)).astype(x.dtype)


@op("elementwise.mod", inputs=["a", "b"], outputs=["c"], attrs={"fmod": Attr("int", 0)},
    infer=broadcast(0), verify=_same_dtypes())
@_errstate
def mod(a, b, fmod=0):
    """Remainder: with the divisor's sign (Python %) when fmod=0, the dividend's (C fmod) when 1."""
    if a.dtype.kind in "iu":
        safe = np.where(b == 0, 1, b).astype(b.dtype)
        r = np.fmod(a, safe) if fmod else np.mod(a, safe)
        return np.where(b == 0, 0, r).astype(a.dtype)
    return (np.fmod(a, b) if fmod else np.mod(a, b)).astype(a.dtype, copy=False)


@op("elementwise.bit_shift", inputs=["x", "y"], outputs=["z"], attrs={"direction": Attr("str", REQUIRED)},
    infer=broadcast(0), verify=_same_dtypes())
def bit_shift(x, y, direction):
    """Logical left / arithmetic right shift. Shifts outside [0, bit width) shift everything out:
    0 for LEFT, and for RIGHT 0 (or -1 for negative signed x), as the ONNX tests require."""
    bits = x.dtype.itemsize * 8
    s = y.astype(np.int64) if y.dtype != np.uint64 else np.minimum(y, bits).astype(np.int64)
    inside = (s >= 0) & (s < bits)
    amount = np.where(inside, s, 0).astype(x.dtype)
    if direction.upper() == "LEFT":
        out = np.where(inside, np.left_shift(x, amount), 0)
    elif direction.upper() == "RIGHT":
        fill = np.where(x < 0, -1, 0) if x.dtype.kind == "i" else 0
        out = np.where(inside, np.right_shift(x, amount), fill)
    else:
        raise ValueError(f"direction must be LEFT or RIGHT, got {direction!r}")
    return np.asarray(out).astype(x.dtype)


# -- variadic ops ----------------------------------------------------------------------------

def _fold(fn: Callable, xs: tuple) -> np.ndarray:
    out = xs[0]
    with np.errstate(all="ignore"):
        for x in xs[1:]:
            out = fn(out, x)
    return np.asarray(out).astype(xs[0].dtype, copy=False)


VARIADIC: dict[str, Callable] = {"max": np.maximum, "min": np.minimum, "sum": np.add}

for _name, _fn in VARIADIC.items():
    op(f"elementwise.{_name}", inputs=["data*"], outputs=["y"], infer=broadcast(0), verify=_same_dtypes(),
       doc=f"Elementwise {_name} of one or more inputs, with numpy broadcasting.")(
        lambda *xs, _fn=_fn: _fold(_fn, xs))


@op("elementwise.mean", inputs=["data*"], outputs=["y"], infer=broadcast(0), verify=_same_dtypes())
def mean(*xs):
    """Elementwise mean of one or more inputs, with numpy broadcasting."""
    total = _fold(np.add, xs)
    with np.errstate(all="ignore"):
        return (total / np.asarray(len(xs), dtype=total.dtype)).astype(total.dtype)


# -- selection -------------------------------------------------------------------------------

def _where_infer(ctx: InferContext) -> list[Type]:
    shapes = [ctx.shape(i) for i in range(3)]
    return [TensorType(ctx.dtype(1), broadcast_shapes(*shapes))]


@op("elementwise.where", inputs=["condition", "x", "y"], outputs=["z"], infer=_where_infer,
    verify=_same_dtypes(1, 2))
def where(condition, x, y):
    """x where condition is true, else y (numpy broadcasting)."""
    return np.where(condition.astype(bool), x, y).astype(x.dtype, copy=False)


@op("elementwise.clip", inputs=["input", "min?", "max?"], outputs=["output"], infer=same_as(0),
    verify=_same_dtypes())
def clip(x, min=None, max=None):  # noqa: A002  (the ONNX input names)
    """Clamp to [min, max]; an omitted bound is unbounded. When min > max every value becomes max."""
    out = x
    if min is not None and np.size(min):
        out = np.maximum(out, np.asarray(min, dtype=x.dtype).reshape(()))
    if max is not None and np.size(max):
        out = np.minimum(out, np.asarray(max, dtype=x.dtype).reshape(()))
    return np.asarray(out).astype(x.dtype, copy=False)


# -- Cast ------------------------------------------------------------------------------------

_FLOAT8 = {DType.FLOAT8E4M3FN, DType.FLOAT8E4M3FNUZ, DType.FLOAT8E5M2, DType.FLOAT8E5M2FNUZ,
           DType.FLOAT4E2M1, DType.FLOAT6E2M3, DType.FLOAT6E3M2}


def _format_number(v) -> str:
    """A number as a string the way onnxruntime writes it: "%.8g" for floats with INF, -INF and
    NaN spelled as the ONNX spec names them, plain digits for ints, "1"/"0" for bools."""
    if isinstance(v, bool):
        return "1" if v else "0"
    if isinstance(v, int):
        return str(v)
    if math.isnan(v):
        return "NaN"
    if math.isinf(v):
        return "INF" if v > 0 else "-INF"
    return "%.8g" % v


def _is_exotic(dtype: np.dtype) -> bool:
    """Whether ``dtype`` is an ml_dtypes type (bfloat16, float8/6/4, int4/2, uint4/2)."""
    return np.dtype(dtype).type.__module__.startswith("ml_dtypes")


def _standard(x: np.ndarray) -> np.ndarray:
    """``x`` widened exactly to a standard numpy type (float32 or int64) if it is exotic."""
    if not _is_exotic(x.dtype):
        return x
    return x.astype(np.float32 if DType.from_numpy(x.dtype).is_float else np.int64)


def _parse_string(s: str, to: DType):
    """A string as a number of type ``to`` (ONNX accepts INF/NaN spellings and exponents)."""
    s = s.strip()
    if to == DType.BOOL:
        try:
            return float(s) != 0
        except ValueError:
            return s.lower() == "true"
    if to.is_int:
        try:
            return int(s, 10)
        except ValueError:
            return int(float(s))
    return float(s)


def _to_float8e8m0(x: np.ndarray, saturate: int, round_mode: str) -> np.ndarray:
    """float → float8e8m0 (an exponent-only type): keep the float32 exponent, rounding the
    mantissa away as ``round_mode`` says ("up", "down" or "nearest")."""
    bits = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
    exponent = ((bits >> 23) & 0xFF).astype(np.uint16)
    special = exponent == 0xFF
    if round_mode == "nearest":
        g = (bits & 0x400000) > 0
        r = (bits & 0x200000) > 0
        s = (bits & 0x1FFFFF) > 0
        up = g & (r | s | (exponent > 0))
    elif round_mode == "up":
        up = (bits & 0x7FFFFF) > 0
    elif round_mode == "down":
        up = np.zeros(bits.shape, bool)
    else:
        raise ValueError(f"round_mode must be up, down or nearest, got {round_mode!r}")
    up &= ~special
    if saturate:
        up &= exponent != 0xFE
    exponent = (exponent + up).astype(np.uint8)
    out = np.where(special, np.uint8(0xFF), exponent).astype(np.uint8)
    return out.view(ml_dtypes.float8_e8m0fnu)


def cast_array(x: np.ndarray, to: DType, saturate: int = 1, round_mode: str = "up") -> np.ndarray:
    """ONNX Cast of ``x`` to ``to``: numbers ↔ strings, saturating float8 casts, packed ints."""
    target = to.numpy
    if to == DType.STRING:
        if x.dtype == object:
            return x.copy()
        wide = _standard(x)
        return _objects([_format_number(v) for v in wide.reshape(-1).tolist()], x.shape)
    if x.dtype == object or x.dtype.kind in "US":
        flat = [_parse_string(str(v), to) for v in x.reshape(-1)]
        wide = np.float64 if not to.is_int else (np.uint64 if not to.is_signed else np.int64)
        x = np.array(flat, dtype=bool if to == DType.BOOL else wide).reshape(x.shape)
        if to == DType.BOOL:
            return x
    # ml_dtypes converts its exotic types reliably only to and from the standard numpy types.
    if _is_exotic(x.dtype) and (_is_exotic(target) or not to.is_float):
        x = _standard(x)
    if to == DType.FLOAT8E8M0:
        return _to_float8e8m0(x.astype(np.float32), saturate, round_mode)
    if to in _FLOAT8 and saturate and x.dtype != np.bool_:
        info = ml_dtypes.finfo(target)
        wide = x.astype(np.float32 if x.dtype in (np.float16, np.float32) else np.float64)
        # Saturate: out-of-range values and ±inf become ±max; NaN stays NaN.
        return np.clip(wide, float(info.min), float(info.max)).astype(target)
    with np.errstate(all="ignore"):
        return x.astype(target)


def _cast_infer(ctx: InferContext) -> list[Type]:
    return [TensorType(ctx.attrs["to"], ctx.shape(0))]


@op("elementwise.cast", inputs=["input"], outputs=["output"],
    attrs={"to": Attr("dtype", REQUIRED), "saturate": Attr("int", 1), "round_mode": Attr("str", "up")},
    infer=_cast_infer)
def cast(x, to, saturate=1, round_mode="up"):
    """Convert to dtype ``to`` (ONNX Cast rules: saturating float8, strings ↔ numbers)."""
    return cast_array(x, to, saturate, round_mode)


@op("elementwise.cast_like", inputs=["input", "target_type"], outputs=["output"],
    attrs={"saturate": Attr("int", 1), "round_mode": Attr("str", "up")},
    infer=lambda ctx: [TensorType(ctx.dtype(1), ctx.shape(0))])
def cast_like(x, target_type, saturate=1, round_mode="up"):
    """Cast ``x`` to the dtype of ``target_type``."""
    return cast_array(x, DType.from_numpy(target_type.dtype), saturate, round_mode)


# -- string ops ------------------------------------------------------------------------------

def _objects(values: list, shape) -> np.ndarray:
    """An object array of ``shape`` holding the strings ``values`` (in C order)."""
    out = np.empty(len(values), dtype=object)
    out[:] = values
    return out.reshape(shape)


@op("elementwise.string_concat", inputs=["x", "y"], outputs=["z"], infer=broadcast(0))
def string_concat(x, y):
    """Concatenate strings elementwise, with numpy broadcasting."""
    a, b = np.broadcast_arrays(x.astype(object), y.astype(object))
    return _objects([str(p) + str(q) for p, q in zip(a.reshape(-1), b.reshape(-1))], a.shape)


@op("elementwise.regex_full_match", inputs=["x"], outputs=["y"], attrs={"pattern": Attr("str", REQUIRED)},
    infer=lambda ctx: [TensorType(DType.BOOL, ctx.shape(0))])
def regex_full_match(x, pattern):
    """True where the whole string matches ``pattern`` (RE2 syntax; Python's re for the common subset)."""
    compiled = re.compile(pattern)
    flat = [compiled.fullmatch(str(s)) is not None for s in x.reshape(-1)]
    return np.array(flat, dtype=bool).reshape(x.shape)


def _normalize_infer(ctx: InferContext) -> list[Type]:
    shape = ctx.shape(0)
    out = None if shape is None else tuple(shape[:-1]) + ("?",)
    return [TensorType(DType.STRING, out)]


@op("elementwise.string_normalizer", inputs=["x"], outputs=["y"],
    attrs={"case_change_action": Attr("str", "NONE"), "is_case_sensitive": Attr("int", 0),
           "locale": Attr("str", None), "stopwords": Attr("strs", None)},
    infer=_normalize_infer)
def string_normalizer(x, case_change_action="NONE", is_case_sensitive=0, locale=None, stopwords=None):
    """Drop stopwords from a [C] or [1, C] string tensor, then change case. An all-stopword input
    gives one empty string."""
    if x.ndim not in (1, 2) or (x.ndim == 2 and x.shape[0] != 1):
        raise ValueError(f"StringNormalizer takes shape [C] or [1, C], got {list(x.shape)}")
    stopwords = stopwords or ()
    if is_case_sensitive:
        stops = set(stopwords)
        kept = [str(s) for s in x.reshape(-1) if str(s) not in stops]
    else:
        stops = {w.casefold() for w in stopwords}
        kept = [str(s) for s in x.reshape(-1) if str(s).casefold() not in stops]
    change = {"LOWER": str.lower, "UPPER": str.upper, "NONE": lambda s: s}.get(case_change_action)
    if change is None:
        raise ValueError(f"case_change_action must be LOWER, UPPER or NONE, got {case_change_action!r}")
    kept = [change(s) for s in kept] or [""]
    out = _objects(kept, (len(kept),))
    return out.reshape(1, -1) if x.ndim == 2 else out


def _split_infer(ctx: InferContext) -> list[Type]:
    shape = ctx.shape(0)
    return [TensorType(DType.STRING, None if shape is None else tuple(shape) + ("?",)),
            TensorType(DType.INT64, shape)]


@op("elementwise.string_split", inputs=["x"], outputs=["substrings", "length"],
    attrs={"delimiter": Attr("str", None, "None or empty: split at runs of whitespace"),
           "maxsplit": Attr("int", None, "None: unlimited")}, infer=_split_infer)
def string_split(x, delimiter=None, maxsplit=None):
    """Split each string by ``delimiter`` (runs of whitespace when empty) at most ``maxsplit``
    times (unlimited when None); substrings are padded with "" to the longest split."""
    limit = -1 if maxsplit is None or maxsplit < 0 else maxsplit
    parts = [str(s).split(delimiter or None, limit) for s in x.reshape(-1)]
    width = max((len(p) for p in parts), default=0)
    subs = np.empty((len(parts), width), dtype=object)
    subs[...] = ""
    for i, p in enumerate(parts):
        subs[i, :len(p)] = p
    lengths = np.array([len(p) for p in parts], dtype=np.int64).reshape(x.shape)
    return subs.reshape(tuple(x.shape) + (width,)), lengths


# -- Shrink ----------------------------------------------------------------------------------

@op("elementwise.shrink", inputs=["input"], outputs=["output"],
    attrs={"bias": Attr("float", 0.0), "lambd": Attr("float", 0.5)}, infer=same_as(0))
def shrink(x, bias=0.0, lambd=0.5):
    """x + bias where x < −lambd, x − bias where x > lambd, else 0 (computed wide, returned in
    x's dtype, so integer inputs work too)."""
    wide = _standard(x).astype(np.float64)
    with np.errstate(all="ignore"):
        out = np.where(wide < -lambd, wide + bias, np.where(wide > lambd, wide - bias, 0.0))
    return out.astype(x.dtype)


# -- BitCast ---------------------------------------------------------------------------------

#: Bit widths of the types narrower than the byte numpy stores each of their values in.
_SUB_BYTE_BITS = {DType.INT4: 4, DType.UINT4: 4, DType.FLOAT4E2M1: 4, DType.INT2: 2, DType.UINT2: 2,
                  DType.FLOAT6E2M3: 6, DType.FLOAT6E3M2: 6}


def bit_width(dtype: DType) -> int:
    """The number of bits of one value of ``dtype`` (strings have none: an error)."""
    if dtype == DType.STRING:
        raise ValueError("strings have no fixed bit width")
    return _SUB_BYTE_BITS.get(dtype, dtype.numpy.itemsize * 8)


def _verify_bit_cast(ctx: InferContext) -> None:
    to = ctx.attrs["to"]
    if not isinstance(ctx.input_types[0], TensorType):
        return
    src = ctx.dtype(0)
    if DType.STRING in (src, to):
        raise ctx.fail("BitCast does not take or produce strings")
    if bit_width(src) != bit_width(to):
        raise ctx.fail(f"BitCast needs types of one bit width: {src.value} has {bit_width(src)} bits, "
                       f"{to.value} has {bit_width(to)}; use Cast to convert values")


@op("elementwise.bit_cast", inputs=["input"], outputs=["output"], attrs={"to": Attr("dtype", REQUIRED)},
    infer=_cast_infer, verify=_verify_bit_cast)
def bit_cast(x, to):
    """Reinterpret the bits of each value as type ``to`` of the same bit width (little endian);
    the shape stays. Bytes cast to bool give True for any nonzero pattern."""
    src = DType.from_numpy(x.dtype)
    if DType.STRING in (src, to) or bit_width(src) != bit_width(to):
        raise ValueError(f"cannot bit-cast {src.value} to {to.value}: bit widths differ or strings")
    # (np.ascontiguousarray would turn a scalar into shape (1,); reshape keeps the rank.)
    data = np.ascontiguousarray(x).reshape(x.shape)
    if data.dtype.byteorder == ">":
        data = data.astype(data.dtype.newbyteorder("<"))
    if to == DType.BOOL:
        return data.view(np.uint8) != 0
    if to in _SUB_BYTE_BITS:
        # numpy keeps a sub-byte value in the low bits of its byte: keep only those bits.
        mask = np.uint8((1 << _SUB_BYTE_BITS[to]) - 1)
        return (data.view(np.uint8) & mask).view(to.numpy)
    return data.view(to.numpy).copy()
