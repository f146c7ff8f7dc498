"""Elementwise ATen ops: arithmetic, comparisons, logic, unary math, activations, casts.

torch promotes dtypes itself (``int_tensor * 0.5`` is float); converters cast every operand to
torch's result dtype (the node's fake-tensor dtype) first, since qir's binary ops take operands
of one dtype, and give Python scalars as 0-d constants of that dtype.
"""

from __future__ import annotations

from qir.frontends.torch.importer import to_dtype, torch_module
from qir.frontends.torch.registry import aten
from qir.ir.types import DType


def _binary(ctx, qir_op: str, a="self", b="other", dtype: DType | None = None):
    dt = dtype or ctx.out_dtype
    return ctx.emit(qir_op, [ctx.value(ctx.args[a], dt), ctx.value(ctx.args[b], dt)])


def _scaled(ctx, name: str, factor):
    """``ctx.args[name]`` times ``factor`` (alpha of add/sub), skipping a factor of 1."""
    dt = ctx.out_dtype
    value = ctx.value(ctx.args[name], dt)
    if factor is None or factor == 1:
        return value
    return ctx.emit("elementwise.mul", [value, ctx.value(factor, dt)])


@aten("add")
def add(ctx):
    return ctx.emit("elementwise.add", [ctx.value(ctx.args["self"], ctx.out_dtype),
                                        _scaled(ctx, "other", ctx.args.get("alpha"))])


@aten("sub")
def sub(ctx):
    return ctx.emit("elementwise.sub", [ctx.value(ctx.args["self"], ctx.out_dtype),
                                        _scaled(ctx, "other", ctx.args.get("alpha"))])


@aten("rsub")
def rsub(ctx):
    """other − alpha·self."""
    return ctx.emit("elementwise.sub", [ctx.value(ctx.args["other"], ctx.out_dtype),
                                        _scaled(ctx, "self", ctx.args.get("alpha"))])


@aten("mul")
def mul(ctx):
    return _binary(ctx, "elementwise.mul")


@aten("div")
def div(ctx):
    mode = ctx.args.get("rounding_mode")
    dt = ctx.out_dtype
    if mode is None:
        return _binary(ctx, "elementwise.div")
    # Rounded division: divide in float, round toward −inf or 0, back to torch's dtype.
    wd = dt if dt.is_float else DType.FLOAT64
    q = _binary(ctx, "elementwise.div", dtype=wd)
    if mode == "floor":
        q = ctx.emit("elementwise.floor", [q])
    elif mode == "trunc":  # trunc(q) = sign(q)·floor(|q|)
        q = ctx.emit("elementwise.mul", [ctx.emit("elementwise.sign", [q]),
                                         ctx.emit("elementwise.floor", [ctx.emit("elementwise.abs", [q])])])
    else:
        raise ctx.fail(f"rounding_mode {mode!r} is not supported")
    return q if wd == dt else ctx.emit("elementwise.cast", [q], {"to": dt})


@aten("pow")
def pow_(ctx):
    return _binary(ctx, "elementwise.pow", "self", "exponent")


@aten("remainder")
def remainder(ctx):
    """Python's %: the divisor's sign."""
    dt = ctx.out_dtype
    return ctx.emit("elementwise.mod", [ctx.value(ctx.args["self"], dt), ctx.value(ctx.args["other"], dt)], {"fmod": 0})


@aten("fmod")
def fmod(ctx):
    """C's fmod: the dividend's sign."""
    dt = ctx.out_dtype
    return ctx.emit("elementwise.mod", [ctx.value(ctx.args["self"], dt), ctx.value(ctx.args["other"], dt)], {"fmod": 1})


@aten("maximum")
def maximum(ctx):
    return _binary(ctx, "elementwise.max")


@aten("minimum")
def minimum(ctx):
    return _binary(ctx, "elementwise.min")


# -- comparisons and logic -------------------------------------------------------------------

def _promoted(ctx, a, b) -> DType:
    """torch's result dtype of an op on ``a`` and ``b`` (tensor args or Python numbers)."""
    torch = torch_module()

    def probe(x):
        if hasattr(x, "meta"):
            val = x.meta["val"]
            return torch.empty((0,) * val.dim(), dtype=val.dtype) if val.dim() else torch.zeros((), dtype=val.dtype)
        return x

    return to_dtype(torch.result_type(probe(a), probe(b)), f"node {ctx.name}: ")


def _comparison(qir_op: str, negate: bool = False):
    def convert(ctx):
        a, b = ctx.args["self"], ctx.args["other"]
        dt = _promoted(ctx, a, b)
        y = ctx.emit(qir_op, [ctx.value(a, dt), ctx.value(b, dt)])
        return ctx.emit("elementwise.not", [y]) if negate else y
    return convert


for _name, _op, _neg in (("eq", "elementwise.equal", False), ("ne", "elementwise.equal", True),
                         ("lt", "elementwise.less", False), ("le", "elementwise.less_or_equal", False),
                         ("gt", "elementwise.greater", False), ("ge", "elementwise.greater_or_equal", False)):
    aten(_name)(_comparison(_op, _neg))


def _logical(qir_op: str):
    def convert(ctx):
        return ctx.emit(qir_op, [ctx.value(ctx.args["self"], DType.BOOL), ctx.value(ctx.args["other"], DType.BOOL)])
    return convert


for _name, _op in (("logical_and", "elementwise.and"), ("logical_or", "elementwise.or"),
                   ("logical_xor", "elementwise.xor")):
    aten(_name)(_logical(_op))


def _bitwise(bool_op: str, int_op: str):
    def convert(ctx):
        return _binary(ctx, bool_op if ctx.out_dtype == DType.BOOL else int_op)
    return convert


for _name, _bool_op, _int_op in (("bitwise_and", "elementwise.and", "elementwise.bitwise_and"),
                                 ("bitwise_or", "elementwise.or", "elementwise.bitwise_or"),
                                 ("bitwise_xor", "elementwise.xor", "elementwise.bitwise_xor")):
    aten(_name)(_bitwise(_bool_op, _int_op))


@aten("logical_not")
def logical_not(ctx):
    return ctx.emit("elementwise.not", [ctx.value(ctx.args["self"], DType.BOOL)])


@aten("bitwise_not")
def bitwise_not(ctx):
    op = "elementwise.not" if ctx.out_dtype == DType.BOOL else "elementwise.bitwise_not"
    return ctx.emit(op, [ctx.value(ctx.args["self"])])


@aten("where")
def where(ctx):
    dt = ctx.out_dtype
    return ctx.emit("elementwise.where", [ctx.value(ctx.args["condition"], DType.BOOL),
                                          ctx.value(ctx.args["self"], dt), ctx.value(ctx.args["other"], dt)])


@aten("masked_fill")
def masked_fill(ctx):
    dt = ctx.out_dtype
    return ctx.emit("elementwise.where", [ctx.value(ctx.args["mask"], DType.BOOL),
                                          ctx.value(ctx.args["value"], dt), ctx.value(ctx.args["self"], dt)])


# -- unary ---------------------------------------------------------------------------------

_UNARY = {
    "neg": "elementwise.neg", "exp": "elementwise.exp", "log": "elementwise.log",
    "sqrt": "elementwise.sqrt", "abs": "elementwise.abs", "sin": "elementwise.sin",
    "cos": "elementwise.cos", "tan": "elementwise.tan", "erf": "elementwise.erf",
    "reciprocal": "elementwise.reciprocal", "floor": "elementwise.floor", "ceil": "elementwise.ceil",
    "sign": "elementwise.sign", "tanh": "nn.tanh", "sigmoid": "nn.sigmoid", "relu": "nn.relu",
    "hardswish": "nn.hard_swish", "mish": "nn.mish", "asin": "elementwise.asin",
    "acos": "elementwise.acos", "atan": "elementwise.atan", "sinh": "elementwise.sinh",
    "cosh": "elementwise.cosh",
}


def _unary(qir_op: str):
    def convert(ctx):
        return ctx.emit(qir_op, [ctx.value(ctx.args["self"], ctx.out_dtype)])
    return convert


for _name, _op in _UNARY.items():
    aten(_name)(_unary(_op))


@aten("round")
def round_(ctx):
    if ctx.args.get("decimals", 0):
        raise ctx.fail("round with decimals is not supported")
    return ctx.emit("elementwise.round", [ctx.value(ctx.args["self"], ctx.out_dtype)])


@aten("rsqrt")
def rsqrt(ctx):
    return ctx.emit("elementwise.reciprocal", [ctx.emit("elementwise.sqrt", [ctx.value(ctx.args["self"], ctx.out_dtype)])])


@aten("log1p")
def log1p(ctx):
    x = ctx.value(ctx.args["self"], ctx.out_dtype)
    return ctx.emit("elementwise.log", [ctx.emit("elementwise.add", [x, ctx.value(1.0)])])


@aten("expm1")
def expm1(ctx):
    x = ctx.value(ctx.args["self"], ctx.out_dtype)
    return ctx.emit("elementwise.sub", [ctx.emit("elementwise.exp", [x]), ctx.value(1.0)])


@aten("isnan")
def isnan(ctx):
    return ctx.emit("elementwise.is_nan", [ctx.value(ctx.args["self"])])


@aten("isinf")
def isinf(ctx):
    return ctx.emit("elementwise.is_inf", [ctx.value(ctx.args["self"])])


@aten("gelu")
def gelu(ctx):
    return ctx.emit("nn.gelu", [ctx.value(ctx.args["self"])], {"approximate": ctx.args.get("approximate") or "none"})


@aten("silu")
def silu(ctx):
    return ctx.emit("nn.swish", [ctx.value(ctx.args["self"])], {"alpha": 1.0})


@aten("hardsigmoid")
def hardsigmoid(ctx):
    return ctx.emit("nn.hard_sigmoid", [ctx.value(ctx.args["self"])], {"alpha": 1 / 6, "beta": 0.5})


@aten("leaky_relu")
def leaky_relu(ctx):
    return ctx.emit("nn.leaky_relu", [ctx.value(ctx.args["self"])], {"alpha": float(ctx.args["negative_slope"])})


@aten("elu")
def elu(ctx):
    alpha, scale, input_scale = (float(ctx.args[k]) for k in ("alpha", "scale", "input_scale"))
    x = ctx.value(ctx.args["self"])
    if input_scale != 1:
        x = ctx.emit("elementwise.mul", [x, ctx.value(input_scale)])
    y = ctx.emit("nn.elu", [x], {"alpha": alpha})
    return y if scale == 1 else ctx.emit("elementwise.mul", [y, ctx.value(scale)])


@aten("softplus")
def softplus(ctx):
    """log(1 + exp(beta·x)) / beta. torch returns x where beta·x > threshold; the difference
    there is below log1p(exp(-threshold)) (2e-9 at the default threshold of 20)."""
    beta = float(ctx.args["beta"])
    x = ctx.value(ctx.args["self"])
    if beta == 1:
        return ctx.emit("nn.softplus", [x])
    y = ctx.emit("nn.softplus", [ctx.emit("elementwise.mul", [x, ctx.value(beta)])])
    return ctx.emit("elementwise.div", [y, ctx.value(beta)])


@aten("_prelu_kernel", "prelu")
def prelu(ctx):
    x, w = ctx.value(ctx.args["self"]), ctx.value(ctx.args["weight"])
    rank, wrank = ctx.rank(ctx.args["self"]), ctx.rank(ctx.args["weight"])
    if wrank == 1 and rank >= 2:  # one slope per channel (dim 1): [C, 1, ..., 1] broadcasts right
        w = ctx.emit("tensor.reshape", [w, ctx.ints([-1] + [1] * (rank - 2))])
    return ctx.emit("nn.prelu", [x, w])


def _clamp(ctx, low, high):
    x = ctx.value(ctx.args["self"], ctx.out_dtype)
    scalar = lambda v: v is None or not hasattr(v, "meta")  # noqa: E731
    if scalar(low) and scalar(high):
        return ctx.emit("elementwise.clip", [x, None if low is None else ctx.value(low),
                                             None if high is None else ctx.value(high)])
    if low is not None:  # tensor bounds broadcast: max then min, as torch.clamp does
        x = ctx.emit("elementwise.max", [x, ctx.value(low, ctx.out_dtype)])
    if high is not None:
        x = ctx.emit("elementwise.min", [x, ctx.value(high, ctx.out_dtype)])
    return x


@aten("clamp")
def clamp(ctx):
    return _clamp(ctx, ctx.args.get("min"), ctx.args.get("max"))


@aten("clamp_min")
def clamp_min(ctx):
    return _clamp(ctx, ctx.args["min"], None)


@aten("clamp_max")
def clamp_max(ctx):
    return _clamp(ctx, None, ctx.args["max"])


@aten("hardtanh")
def hardtanh(ctx):
    return _clamp(ctx, ctx.args["min_val"], ctx.args["max_val"])


# -- casts and copies ----------------------------------------------------------------------

@aten("_to_copy", "to", "type_as")
def to_copy(ctx):
    """A cast to torch's result dtype (device and layout moves are no-ops here)."""
    return ctx.value(ctx.args["self"], ctx.out_dtype)


@aten("alias", "clone", "contiguous", "detach", "lift_fresh_copy", "lift_fresh")
def alias(ctx):
    """Copies and aliases: the same value (qir values are immutable)."""
    return ctx.value(ctx.args["self"])


@aten("dropout", "feature_dropout", "alpha_dropout")
def dropout(ctx):
    """Inference: the identity (qir imports models in eval mode)."""
    if ctx.args.get("train"):
        raise ctx.fail("dropout in training mode is not supported; export the model in eval mode")
    return ctx.value(ctx.args["input"])
