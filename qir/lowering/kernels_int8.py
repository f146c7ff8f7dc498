"""Kernel rules for the integer-only quantized ops (the ``qint`` family) on SIMD CPU targets.

Registered into ``qir.lowering.kernels.KERNEL_RULES`` (kernels.py imports this module last), so
a quantized graph's nodes get generated kernels instead of their numpy reference kernels. Every
kernel must reproduce its reference BIT FOR BIT (docs/quantization.md): the rules only accept
nodes whose integer arithmetic the generated code does exactly, and say why otherwise (the node
then falls back, which is correct, only slower).

Kernels (``LAYOUT_SLOTS``: qconv, qmaxpool and qeltwise read and write NHWC when their
neighbours do, converting plain NCHW through scratch themselves; the others are plain):

- ``qconv`` (qint.conv) and ``qgemm`` (qint.matmul with a constant ``[K, N]`` B): u8 activations
  × i8 weights → exact i32 accumulators. The input is copied into a zero-point-haloed NHWC
  scratch image (padding is real zero: the input zero point), so the inner loop is a plain
  implicit GEMM of ``mr`` output pixels × ``nv`` vectors of output channels. With u8 ``x`` used
  directly, acc = Σ x·w − zx·Σw + b: ``b − zx·Σw`` is folded per channel at pack time
  (``conv_params``). Depthwise convolutions (group = C = M) get their own kernel.
- ``qeltwise``: qint.add / qint.mul / qint.requantize on same-shape tensors, in int64 lanes;
  elementwise.clip on integers (a quantized ReLU / ReLU6: a clamp at constant bounds).
- ``qmean``: qint.mean over trailing axes and global qint.average_pool (one element count).
- ``qlookup``: qint.lookup, a table gather.
- ``qmaxpool``: nn.max_pool / nn.global_max_pool on 8/16-bit integers.
- ``qcopy``: reshape-like ops (reshape, flatten, squeeze, unsqueeze, identity) on integers.
- ``qconcat``: tensor.concat of integer tensors (plain layout).

Integer max pooling, copies, clip and concat are registered in front of the fp32 rules of the
same ops (``_chain``): integer tensors get these kernels, float ones the fp32 kernels.

The requantization of ``qconv``/``qgemm`` runs in i32 lanes: t = (a·M + 2^30) >> 31 with a
32×32→64-bit multiply, then the rounding shift as (t + 2^(s−1) + zy·2^s) >> s when that sum
provably fits 32 bits (``ConvParams.folded``), else as (t >> s) + ((t >> (s−1)) & 1) + zy, which
equals (t + 2^(s−1)) >> s + zy without the overflow of the addition. It needs |acc| < 2^31
(checked per channel from Σ|w|, the bias and the zero point) and shift ≥ 0; a shift ≥ 32 maps
every such accumulator to 0, so those channels get M = 0. Nodes with a left shift (factor ≥ 1)
and 16-bit activations (A16W8) fall back to their reference kernels, with the reason reported.
"""

from __future__ import annotations

import math

import attrs
import numpy as np

from qir.ir.fixedpoint import quantize_multiplier
from qir.ir.graph import Node, Value
from qir.ir.ops.qint import type_range
from qir.ir.types import DType, TensorType
from qir.lowering.kernels import (KERNEL_RULES, ConvGeometry, NodeKernel, Unsupported, VectorISA, _align,
                                  conv_geometry,
                                  _attrs, _shape, rule)

#: Integer element types the kernels read and write.
INT_TYPES = (DType.UINT8, DType.INT8, DType.UINT16, DType.INT16)
BYTE_TYPES = (DType.UINT8, DType.INT8)


@attrs.frozen
class QGemmSchedule:
    """An integer implicit GEMM (``kind="gemm"``) or depthwise conv (``kind="depthwise"``).

    ``mr`` output pixels × ``nv`` vectors of ``lanes`` i32 accumulators; the output is clamped to
    ``[lo, hi]`` after adding ``y_zero_point``; ``x_zero_point`` fills the padding halo.
    """

    kind: str
    mr: int
    nv: int
    lanes: int
    x_zero_point: int
    y_zero_point: int
    lo: int
    hi: int
    out_signed: bool
    folded: bool = False

    @property
    def nr(self) -> int:
        return self.nv * self.lanes


@attrs.frozen
class QEltwiseSchedule:
    """A flat integer map over ``n`` elements: ``op`` is add, mul or requantize; ``params`` its
    integer attributes (zero points, multipliers, shifts, left shift, clamp), by name."""

    op: str
    n: int
    lanes: int
    params: tuple[tuple[str, int], ...]
    in_types: tuple[str, ...]
    out_type: str


@attrs.frozen
class QMeanSchedule:
    """``rows`` sums of ``length`` consecutive elements, requantized by one (M, shift)."""

    rows: int
    length: int
    lanes: int
    x_zero_point: int
    left_shift: int
    multiplier: int
    shift: int
    y_zero_point: int
    lo: int
    hi: int
    in_type: str
    out_type: str


@attrs.frozen
class QSimpleSchedule:
    """Lookup / max-pool / copy: element counts and types (pool geometry in NodeKernel)."""

    n: int
    in_type: str
    out_type: str


def _int(v: Value | None, types=INT_TYPES) -> DType:
    if v is None or not isinstance(v.type, TensorType) or v.type.dtype not in types:
        raise Unsupported(f"%{getattr(v, 'name', '?')} is {getattr(v, 'type', None)}, int8 kernels take "
                          f"{'/'.join(t.value for t in types)}")
    return v.type.dtype


def _const_ints(node: Node, i: int, what: str) -> np.ndarray | None:
    v = node.inputs[i] if len(node.inputs) > i else None
    if v is None:
        return None
    if v.const is None:
        raise Unsupported(f"{what} is not constant")
    return np.asarray(v.const).astype(np.int64).reshape(-1)


def _clamp(a: dict, dtype: DType) -> tuple[int, int]:
    lo, hi = type_range(dtype)
    if a.get("y_min") is not None:
        lo = max(lo, int(a["y_min"]))
    if a.get("y_max") is not None:
        hi = min(hi, int(a["y_max"]))
    return lo, hi


# -- conv / matmul ---------------------------------------------------------------------------

@attrs.frozen
class ConvParams:
    """Per output channel: weights [M, Cg, KH, KW] (int64), folded bias b − zx·Σw, M, shift, and
    ``rounding`` = 2^(shift−1) + zy·2^shift (zy alone at shift 0): when ``folded``, every
    |t| + |rounding| < 2^31 and the epilogue computes (t + rounding) >> shift, which equals the
    rounding shift plus the output zero point, in one add and one shift."""

    w: np.ndarray
    bias: np.ndarray
    multiplier: np.ndarray
    shift: np.ndarray
    rounding: np.ndarray
    folded: bool


def conv_params(node: Node) -> ConvParams:
    """The constants a qconv / qgemm kernel packs, checked for exact i32 arithmetic."""
    a = _attrs(node)
    w = np.asarray(node.inputs[1].const).astype(np.int64)
    if node.op == "qint.matmul":
        w = np.ascontiguousarray(w.T).reshape(w.shape[1], w.shape[0], 1, 1)  # [N, K, 1, 1]
        zx = int(a["a_zero_point"])
    else:
        zx = int(a["x_zero_point"])
    m = w.shape[0]
    wz = _const_ints(node, 5, "weight zero point")
    if wz is not None and np.any(wz != 0):
        raise Unsupported("nonzero weight zero points")
    b = _const_ints(node, 4, "bias")
    b = np.zeros(m, np.int64) if b is None else np.broadcast_to(b, (m,)).astype(np.int64)
    mult = np.broadcast_to(_const_ints(node, 2, "multiplier"), (m,)).astype(np.int64)
    shift = np.broadcast_to(_const_ints(node, 3, "shift"), (m,)).astype(np.int64)
    sums = w.reshape(m, -1).sum(axis=1)
    folded = b - zx * sums
    bound = np.abs(w).reshape(m, -1).sum(axis=1) * 255 + np.abs(folded)
    if np.any(bound >= 2**31) or np.any(np.abs(folded) >= 2**31):
        raise Unsupported("accumulators may exceed 32 bits")
    if np.any(shift < 0):
        raise Unsupported("requantization with a left shift (factor ≥ 1)")
    if np.any((mult < 0) | (mult >= 2**31)):
        raise Unsupported("multiplier outside [0, 2^31)")
    big = shift >= 32  # |t| < 2^31 ≤ 2^(shift−1): the rounding shift gives 0
    mult = np.where(big, 0, mult)
    shift = np.where(big, 0, shift)
    zy = int(a["y_zero_point"])
    rounding = np.where(shift > 0, np.left_shift(1, np.maximum(shift - 1, 0)), 0) + zy * np.left_shift(1, shift)
    fits = bool(np.all(bound + 1 + np.abs(rounding) < 2**31))
    return ConvParams(w, folded, mult, shift, np.where(fits, rounding, 0), fits)


def _out_schedule(node: Node, isa: VectorISA, kind: str, ncols: int, zx: int) -> QGemmSchedule:
    a = _attrs(node)
    out = _int(node.output, BYTE_TYPES)
    lo, hi = _clamp(a, out)
    if kind == "depthwise":
        mr, nv = 1, 1
    else:
        mr, nv = int8_tile(isa, ncols)
    return QGemmSchedule(kind, mr, nv, isa.lanes, zx, int(a["y_zero_point"]), lo, hi,
                         out is DType.INT8)


def int8_tile(isa: VectorISA, ncols: int) -> tuple[int, int]:
    """(mr, nv) of the i32 accumulator tile for ``ncols`` output channels: the fewest padded
    columns (a 96-channel conv takes 2 panels of 3 vectors, not 2 of 4), then the widest; mr
    as large as the registers allow next to nv weight vectors and a broadcast (at most 7 rows
    with 32 registers, 6 with 16)."""
    nv_max = 4 if isa.registers >= 32 else 2
    nv = min(range(1, nv_max + 1), key=lambda v: (-(-ncols // (v * isa.lanes)) * v, -v))
    mr = max(1, min((isa.registers - nv - 1) // nv, 7 if isa.registers >= 32 else 6))
    return mr, nv


@rule("qint.conv")
def _qconv_rule(node: Node, isa: VectorISA) -> NodeKernel:
    x, w = node.inputs[0], node.inputs[1]
    if _int(x) is not DType.UINT8:
        raise Unsupported("only u8 activations (16-bit ones run the reference kernel)")
    if w.const is None or _int(w, (DType.INT8,)) is not DType.INT8:
        raise Unsupported("weights must be constant i8")
    xs, ws, ys = _shape(x), _shape(w), _shape(node.output)
    if len(xs) != 4:
        raise Unsupported(f"only 2-D convolutions (input rank {len(xs)})")
    a = _attrs(node)
    geo = conv_geometry(a, xs, ws, ys)
    groups, c, m = geo.groups, geo.c, geo.m
    cp = conv_params(node)
    kind = "depthwise" if groups == c == m and groups > 1 else "gemm"
    s = attrs.evolve(_out_schedule(node, isa, kind, m // groups, int(a["x_zero_point"])), folded=cp.folded)
    k = NodeKernel(node.name, "qconv", s, geo)
    return attrs.evolve(k, scratch=qconv_scratch(k).total)


@rule("qint.matmul")
def _qgemm_rule(node: Node, isa: VectorISA) -> NodeKernel:
    a_, b_ = node.inputs[0], node.inputs[1]
    if _int(a_) is not DType.UINT8:
        raise Unsupported("only u8 activations (16-bit ones run the reference kernel)")
    if b_.const is None or _int(b_, (DType.INT8,)) is not DType.INT8:
        raise Unsupported("B must be constant i8 (weights are packed at compile time)")
    as_, bs = _shape(a_), _shape(b_)
    if len(bs) != 2 or len(as_) < 1 or as_[-1] != bs[0]:
        raise Unsupported("B must be [K, N] with K the last axis of A")
    cp = conv_params(node)
    rows = math.prod(as_[:-1])
    k_, n_ = bs
    geo = ConvGeometry(1, k_, 1, rows, n_, 1, rows, 1, 1, 1, 1, 1, 1, (0, 0, 0, 0), 1)
    s = attrs.evolve(_out_schedule(node, isa, "gemm", n_, int(_attrs(node)["a_zero_point"])), folded=cp.folded)
    k = NodeKernel(node.name, "qgemm", s, geo)
    return attrs.evolve(k, scratch=qconv_scratch(k).total)


#: Per-channel i32 rows packed for the epilogue: folded bias, multiplier, shift, rounding.
Q_ROWS = 4


@attrs.frozen
class QConvLayout:
    """Scratch and packing layout of a qconv/qgemm for one element format of the activations:
    ``kg`` K values per dot-product step (4 u8 for VNNI, 2 u16 for the widening path), ``xb``
    bytes per staged activation. ``cs``: elements per staged pixel; ``cgk``: channels per group
    rounded up to ``kg``; ``x_bytes``/``y_bytes``: scratch for the staged input and NHWC output."""

    kg: int
    xb: int
    cs: int
    cgk: int
    stage_x: bool
    x_bytes: int
    y_bytes: int

    @property
    def total(self) -> int:
        return self.x_bytes + self.y_bytes


def qconv_layout(k: NodeKernel, vnni: bool, x_nhwc: bool = False, y_nhwc: bool = False) -> QConvLayout:
    """The layout of ``k`` for the VNNI (u8, 4 per step) or widening (u16, 2 per step) path;
    ``x_nhwc``/``y_nhwc``: the input / output of a qconv is NHWC (else plain NCHW: converted)."""
    g, s = k.geometry, k.schedule
    cg = g.c // g.groups
    if s.kind == "depthwise":
        kg, xb = 1, 1
        cgk = 1
        cs = -(-g.c // s.lanes) * s.lanes
    else:
        kg, xb = (4, 1) if vnni else (2, 2)
        cgk = -(-cg // kg) * kg
        cs = (g.groups - 1) * cg + cgk
    padded = any(g.pads)
    # NHWC input (or GEMM rows) is read in place when it needs no padding, widening or realigning
    stage = (k.kernel == "qconv" and not x_nhwc) or cs != g.c or xb != 1 or padded
    if s.kind == "depthwise":  # reads NHWC in place, checking the taps of border pixels
        stage = not x_nhwc or cs != g.c
    x_bytes = _align(g.hp * g.wp * cs * xb + 64) if stage else 0
    y_bytes = _align(g.oh * g.ow * g.m) if k.kernel == "qconv" and not y_nhwc and g.oh * g.ow > 1 else 0
    return QConvLayout(kg, xb, cs, cgk, stage, x_bytes, y_bytes)


def qconv_scratch(k: NodeKernel) -> QConvLayout:
    """The larger of the two layouts (the lowering does not know which path code generation takes)."""
    a, b = qconv_layout(k, True), qconv_layout(k, False)
    return a if a.total >= b.total else b


def qconv_weight_bytes(k: NodeKernel, vnni: bool) -> dict[str, int]:
    g, s = k.geometry, k.schedule
    if s.kind == "depthwise":
        cp = -(-g.c // s.lanes) * s.lanes
        return {"w": g.kh * g.kw * cp * 4, "q": Q_ROWS * cp * 4}
    lay = qconv_layout(k, vnni)
    mg = g.m // g.groups
    panels = -(-mg // s.nr)
    return {"w": g.groups * panels * g.kh * g.kw * lay.cgk * s.nr * lay.xb,
            "q": g.groups * panels * Q_ROWS * s.nr * 4}


def _qconv_weight_sizes(node: Node, k: NodeKernel) -> dict[str, int]:
    a, b = qconv_weight_bytes(k, True), qconv_weight_bytes(k, False)
    return {key: -(-max(a[key], b[key]) // 4) for key in a}


# -- elementwise -----------------------------------------------------------------------------

_ELTWISE_PARAMS = {
    "qint.add": ("a_zero_point", "b_zero_point", "a_multiplier", "a_shift", "b_multiplier", "b_shift",
                 "left_shift", "multiplier", "shift", "y_zero_point"),
    "qint.mul": ("a_zero_point", "b_zero_point", "multiplier", "shift", "y_zero_point"),
    "qint.requantize": ("x_zero_point", "left_shift", "multiplier", "shift", "y_zero_point"),
}


@rule(*_ELTWISE_PARAMS)
def _qeltwise_rule(node: Node, isa: VectorISA) -> NodeKernel:
    ins = [v for v in node.inputs if v is not None]
    types = tuple(_int(v).value for v in ins)
    out = _int(node.output)
    shapes = {_shape(v) for v in ins} | {_shape(node.output)}
    if len(shapes) != 1:
        raise Unsupported("broadcasting (same-shape operands only)")
    a = _attrs(node)
    params = {p: int(a[p]) for p in _ELTWISE_PARAMS[node.op]}
    if not 0 <= params.get("left_shift", 0) <= 31:
        raise Unsupported("left_shift outside [0, 31]")
    lo, hi = _clamp(a, out)
    params.update(lo=lo, hi=hi)
    n = math.prod(_shape(node.output))
    return NodeKernel(node.name, "qeltwise", QEltwiseSchedule(node.op.split(".")[1], n, isa.lanes,
                                                              tuple(params.items()), types, out.value))


# -- averages --------------------------------------------------------------------------------

def _mean_kernel(node: Node, isa: VectorISA, rows: int, length: int) -> NodeKernel:
    a = _attrs(node)
    xt, out = _int(node.inputs[0]), _int(node.output)
    left = int(a["left_shift"])
    m, s = quantize_multiplier(float(a["scale_ratio"]) / (max(length, 1) * 2.0 ** left))
    if not 0 <= left <= 31 or length >= 2**23:
        raise Unsupported("left_shift outside [0, 31] or too many elements per mean")
    lo, hi = _clamp(a, out)
    return NodeKernel(node.name, "qmean", QMeanSchedule(rows, length, isa.lanes, int(a["x_zero_point"]), left,
                                                        m, s, int(a["y_zero_point"]), lo, hi, xt.value,
                                                        out.value))


@rule("qint.mean")
def _qmean_rule(node: Node, isa: VectorISA) -> NodeKernel:
    xs = _shape(node.inputs[0])
    axes_v = node.inputs[1] if len(node.inputs) > 1 else None
    if axes_v is not None and axes_v.const is None:
        raise Unsupported("axes are not constant")
    if axes_v is None or axes_v.const.size == 0:
        if axes_v is not None and _attrs(node)["noop_with_empty_axes"]:
            raise Unsupported("noop_with_empty_axes")
        axes = list(range(len(xs)))
    else:
        axes = sorted(int(v) % len(xs) for v in np.asarray(axes_v.const).reshape(-1))
    if axes != list(range(len(xs) - len(axes), len(xs))):
        raise Unsupported("mean over axes that are not the trailing ones")
    length = math.prod(xs[len(xs) - len(axes):])
    return _mean_kernel(node, isa, math.prod(xs) // max(length, 1), length)


@rule("qint.average_pool")
def _qavg_rule(node: Node, isa: VectorISA) -> NodeKernel:
    xs, ys = _shape(node.inputs[0]), _shape(node.output)
    a = _attrs(node)
    if len(xs) != 4 or list(a["kernel_shape"]) != list(xs[2:]) or any(a["pads"] or ()) or \
            a["auto_pad"] not in ("NOTSET", "VALID") or math.prod(ys[2:]) != 1:
        raise Unsupported("only global windows (kernel = the spatial size, no pads)")
    return _mean_kernel(node, isa, xs[0] * xs[1], xs[2] * xs[3])


# -- lookup, max pool, copies ----------------------------------------------------------------

@rule("qint.lookup")
def _qlookup_rule(node: Node, isa: VectorISA) -> NodeKernel:
    xt = _int(node.inputs[0])
    table = node.inputs[1]
    if table.const is None:
        raise Unsupported("table is not constant")
    out = _int(node.output, INT_TYPES + (DType.INT32,))
    return NodeKernel(node.name, "qlookup", QSimpleSchedule(math.prod(_shape(node.output)), xt.value,
                                                            out.value))


def _qlookup_weight_sizes(node: Node, k: NodeKernel) -> dict[str, int]:
    return {"table": -(-node.inputs[1].const.nbytes // 4)}


def _chain(op: str, int_rule):
    """Register ``int_rule`` for integer tensors of ``op`` in front of the existing (fp32) rule."""
    previous = KERNEL_RULES.get(op)

    def chained(node: Node, isa: VectorISA) -> NodeKernel:
        x = node.inputs[0] if node.inputs else None
        if x is not None and isinstance(x.type, TensorType) and x.type.dtype in INT_TYPES:
            return int_rule(node, isa)
        if previous is None:
            raise Unsupported(f"no kryo kernel for {op} on {getattr(x, 'type', None)}")
        return previous(node, isa)
    KERNEL_RULES[op] = chained


def _qmaxpool_rule(node: Node, isa: VectorISA) -> NodeKernel:
    from qir.lowering.kernels import _pool_geometry

    xt = _int(node.inputs[0])
    if len(node.outputs) > 1 and node.outputs[1] is not None and node.outputs[1].users:
        raise Unsupported("max_pool indices are used")
    a = _attrs(node)
    if node.op == "nn.global_max_pool":
        xs = _shape(node.inputs[0])
        if len(xs) != 4:
            raise Unsupported(f"only 4-D inputs (rank {len(xs)})")
        geo = ConvGeometry(xs[0], xs[1], xs[2], xs[3], xs[1], 1, 1, xs[2], xs[3], 1, 1, 1, 1, (0, 0, 0, 0),
                           xs[1])
    else:
        geo = _pool_geometry(node, node.inputs[0], node.outputs[0], a)
    eb = xt.numpy.itemsize
    k = NodeKernel(node.name, "qmaxpool", QSimpleSchedule(geo.n * geo.c * geo.oh * geo.ow, xt.value, xt.value),
                   geo)
    return attrs.evolve(k, scratch=_align(geo.oh * geo.ow * geo.c * eb))  # a layout conversion


QCOPY_OPS = ("tensor.reshape", "tensor.flatten", "tensor.squeeze", "tensor.unsqueeze", "tensor.identity")


def _qcopy_rule(node: Node, isa: VectorISA) -> NodeKernel:
    xt = _int(node.inputs[0])
    if _int(node.output) is not xt or math.prod(_shape(node.inputs[0])) != math.prod(_shape(node.output)):
        raise Unsupported("element counts or types differ")
    return NodeKernel(node.name, "qcopy", QSimpleSchedule(math.prod(_shape(node.output)), xt.value, xt.value))


def _qclip_rule(node: Node, isa: VectorISA) -> NodeKernel:
    """elementwise.clip on integers (a ReLU / ReLU6 at the quantized bounds): a qeltwise clamp."""
    xt = _int(node.inputs[0])
    if _int(node.output) is not xt:
        raise Unsupported("input and output types differ")
    lo, hi = type_range(xt)
    for i in (1, 2):
        v = node.inputs[i] if len(node.inputs) > i else None
        if v is None:
            continue
        if v.const is None or v.const.size != 1:
            raise Unsupported("clip bounds are not constant scalars")
        bound = int(np.asarray(v.const).reshape(()))
        lo, hi = (max(lo, bound), hi) if i == 1 else (lo, min(hi, bound))
    n = math.prod(_shape(node.output))
    return NodeKernel(node.name, "qeltwise", QEltwiseSchedule("clip", n, isa.lanes, (("lo", lo), ("hi", hi)),
                                                              (xt.value,), xt.value))


@attrs.frozen
class QConcatSchedule:
    """Concatenation of integer tensors (plain layout) as ``outer`` rows: input i gives
    ``parts[i]`` consecutive bytes per row."""

    outer: int
    parts: tuple[int, ...]


def _qconcat_rule(node: Node, isa: VectorISA) -> NodeKernel:
    xt = _int(node.output)
    ins = list(node.inputs)
    for v in ins:
        if _int(v) is not xt:
            raise Unsupported("inputs of different integer types")
    shape = _shape(node.output)
    axis = int(_attrs(node)["axis"]) % len(shape)
    eb = xt.numpy.itemsize
    parts = tuple(math.prod(_shape(v)[axis:]) * eb for v in ins)
    return NodeKernel(node.name, "qconcat", QConcatSchedule(math.prod(shape[:axis]), parts))


_chain("elementwise.clip", _qclip_rule)
_chain("tensor.concat", _qconcat_rule)
for _op in ("nn.max_pool", "nn.global_max_pool"):
    _chain(_op, _qmaxpool_rule)
for _op in QCOPY_OPS:
    _chain(_op, _qcopy_rule)

#: Packed-constant sizes (floats) per int8 kernel kind, read by kernels._weight_sizes.
WEIGHT_SIZES = {"qconv": _qconv_weight_sizes, "qgemm": _qconv_weight_sizes, "qlookup": _qlookup_weight_sizes}


def _qconv_layout_slots(node: Node, k: NodeKernel) -> tuple[list[int], bool]:
    return [0], True


def _qeltwise_layout_slots(node: Node, k: NodeKernel) -> tuple[list[int], bool]:
    return [i for i, v in enumerate(node.inputs) if v is not None and v.const is None], True


#: Which inputs of an int8 kernel may be NHWC and whether its output may be (kernels._layout_slots):
#: convolutions read and write NHWC (no conversion between consecutive ones); element-wise
#: kernels follow their operands (one layout per node).
def _qmaxpool_layout_slots(node: Node, k: NodeKernel) -> tuple[list[int], bool]:
    if k.schedule.in_type not in (DType.UINT8.value, DType.INT8.value):
        return [], False  # the kernel's layout conversions move bytes
    return [0], True


LAYOUT_SLOTS = {"qconv": _qconv_layout_slots, "qeltwise": _qeltwise_layout_slots,
                "qmaxpool": _qmaxpool_layout_slots}
