"""QDQ ONNX in and out: pre-quantized ONNX models become qint graphs, qint graphs become QDQ ONNX.

**Import** (``fold_qdq``, pass ``fold-qdq``; run it right after ``qir.load_onnx``):

- QDQ form (onnxruntime's ``quantize_static`` with ``QuantFormat.QDQ``, TensorRT/QAT exports):
  a float op whose data inputs come from ``DequantizeLinear`` and whose output goes, through at
  most one bias ``Add`` (MatMul only) and one ``Relu``/``Clip``, to exactly one per-tensor
  ``QuantizeLinear`` becomes the qint op (``FOLD_RULES``, op name → rule). Weights are the
  DequantizeLinear's integer constants (per-tensor or per-channel ``axis``), int32 bias keeps
  its integers when its scale is s_in·s_w (up to float32 rounding), else it is re-rounded.
  Multipliers and shifts come from ``quantize_multipliers`` of the float scales, with the very
  expressions ``lower.py`` uses, so a graph lowered by qir, exported with ``export_qdq_onnx``
  and folded again gets the same integers whenever its scales are float32 numbers (ONNX stores
  scales as float32; float64 scales move the multipliers by ~1e-7 relative).
- QOperator form: ``QLinearConv`` → ``qint.conv``, ``QLinearMatMul`` → ``qint.matmul``
  (``QOPERATOR_RULES``). ``ConvInteger``/``MatMulInteger`` (and ``DynamicQuantizeLinear``) are
  left as they are: they already compute in integers. onnxruntime's com.microsoft ops
  (QLinearAdd, QLinearAveragePool, QGemm, ...) are not known to the ONNX importer: such a
  model fails at ``load_onnx``; quantize with ``op_types_to_quantize`` limited to Conv/MatMul
  or use the QDQ form.
- Boundaries, as ``lower.py`` makes them: a float graph input read only by QuantizeLinear
  nodes with one per-tensor 8/16-bit params becomes a quantized graph input (its type carries
  the QuantParams; qir's runtime quantizes float feeds), and a graph output made by a per-tensor
  DequantizeLinear becomes the quantized tensor under the output's name (the runtime
  dequantizes it). Inputs/outputs that don't fit keep their Q/DQ nodes.

Anything not matched stays as it is and runs with the ONNX ops' reference kernels (float
arithmetic, round half to even), so correctness never depends on a match. Rounding differs
from ONNX's QLinear* kernels: qint requantizes with a fixed-point multiplier and rounds half up,
twice (qir/ir/fixedpoint.py: the doubling high multiply, then the rounding shift), ONNX
multiplies in float and rounds once, half to even. Results differ by at most 1 LSB: near ties
for convs and matmuls (~0.2% of outputs), more often for averages whose shift is small (a 2×2
average pool at scale ratio 1 double-rounds 16.25 to 17: ~30% of its outputs).

**Export** (``to_qdq``, ``export_qdq_onnx``): each qint node becomes DequantizeLinear on its
inputs → the float op → Relu/Clip for its clamp → QuantizeLinear with its output's
QuantParams; int32 bias becomes DequantizeLinear(bias, s_in·s_w, axis 0); ``qint.lookup``
becomes an exact integer Gather on its table (the unary op it came from is not recorded).
Integer ops that are plain ONNX ops on integer tensors (Reshape, MaxPool, Concat, Clip...) stay
as they are. Quantized graph inputs get a QuantizeLinear of a float32 input of the same name and
quantized outputs a DequantizeLinear to float32, so the model takes and returns float like qir's
runtime. The model is declared at opset 21 (``QDQ_OPSET``): onnxruntime does not run the
newest Q/DQ versions yet, and the ops used here only gained element types since.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import attrs
import numpy as np

from qir.errors import QirError
from qir.ir.fixedpoint import quantize_multipliers
from qir.ir.graph import Graph, Node, Value
from qir.ir.opdef import get_op
from qir.ir.ops.qint import type_range
from qir.ir.types import DType, QuantParams, TensorType
from qir.passes.cleanup import dead_code_elimination
from qir.passes.quantize.lower import (LOOKUP_OPS, PASS_THROUGH, average_shift, headroom,
                                      headroom_shift, integer_clamp, type_of)
from qir.passes.quantize.params import dequantize_array, qdtype, qrange, quantize_array
from qir.passes.registry import Pass, register_pass

__all__ = ["FoldQdq", "fold_qdq", "to_qdq", "export_qdq_onnx", "FOLD_RULES", "QOPERATOR_RULES",
           "EXPORT_RULES", "QDQ_OPSET"]

_Q, _DQ = "quant.quantize_linear", "quant.dequantize_linear"
#: Integer types a Q/DQ pair may carry for folding (activations and weights; int32 for bias).
_FOLD_DTYPES = {DType.UINT8: 8, DType.INT8: 8, DType.UINT16: 16, DType.INT16: 16, DType.INT32: 32}


# ============================================================================================
# Import: QDQ / QOperator → qint
# ============================================================================================

@attrs.frozen
class QTensor:
    """An integer tensor and its QuantParams: what a DequantizeLinear reads."""

    value: Value
    qp: QuantParams

    @property
    def per_tensor(self) -> bool:
        return self.qp.axis is None and self.qp.bitwidth <= 16


@attrs.define
class Match:
    """A float op between DequantizeLinear inputs and one QuantizeLinear output."""

    node: Node
    inputs: list[QTensor | None]     # per node input: its dequantized source, if any
    qp: QuantParams                  # the output QuantizeLinear's params (per tensor)
    sink: Value                      # that QuantizeLinear's output: what the qint op replaces
    clamp: tuple[int, int] | None    # codes of a Relu/Clip epilogue
    bias: Value | None = None        # the constant operand of an Add epilogue (MatMul bias)


FoldRule = Callable[["_Folder", Match], "Value | None"]
QOperatorRule = Callable[["_Folder", Node], "Value | None"]
FOLD_RULES: dict[str, FoldRule] = {}
QOPERATOR_RULES: dict[str, QOperatorRule] = {}


def fold_rule(*ops: str):
    """Register a QDQ rule for float ``ops``: ``fn(folder, match) -> integer value | None``."""
    def wrap(fn: FoldRule) -> FoldRule:
        for name in ops:
            FOLD_RULES[name] = fn
        return fn
    return wrap


def qoperator_rule(*ops: str):
    """Register a QOperator rule: ``fn(folder, node) -> integer value | None``."""
    def wrap(fn: QOperatorRule) -> QOperatorRule:
        for name in ops:
            QOPERATOR_RULES[name] = fn
        return fn
    return wrap


def params_of(scale: Value | None, zero_point: Value | None, axis: int, int_value: Value | None
              ) -> QuantParams | None:
    """QuantParams of a Q/DQ with constant scale / zero point on integer ``int_value``; None when
    the node is blocked, non-constant or not an 8/16/32-bit integer quantization."""
    t = None if int_value is None else int_value.type
    if not isinstance(t, TensorType) or t.dtype not in _FOLD_DTYPES:
        return None
    if scale is None or scale.const is None or (zero_point is not None and zero_point.const is None):
        return None
    s = np.asarray(scale.const, dtype=np.float64).reshape(-1)
    if s.size == 0 or not np.all(np.isfinite(s)) or np.any(s <= 0):
        return None
    z = np.zeros(s.size, np.int64) if zero_point is None else \
        np.asarray(zero_point.const).astype(np.int64).reshape(-1)
    if z.size != s.size:
        if z.size != 1:
            return None
        z = np.full(s.size, z[0])
    per_axis = np.asarray(scale.const).ndim > 0 and s.size > 1
    if per_axis and t.rank is None:
        return None
    return QuantParams(s, z, _FOLD_DTYPES[t.dtype], t.dtype.is_signed,
                       (axis % t.rank) if per_axis else None)


def _node_params(node: Node, int_value: Value) -> QuantParams | None:
    if node.attrs.get("block_size", 0):
        return None
    zero_point = node.inputs[2] if len(node.inputs) > 2 else None
    return params_of(node.inputs[1], zero_point, int(node.attrs.get("axis", 1)), int_value)


def _dequantized(value: Value | None) -> QTensor | None:
    node = None if value is None else value.producer
    if node is None or node.op != _DQ:
        return None
    qp = _node_params(node, node.inputs[0])
    return None if qp is None else QTensor(node.inputs[0], qp)


def _is_output(graph: Graph, value: Value) -> bool:
    return any(value is v for v in graph.outputs)


def _const_of(value: Value | None) -> np.ndarray | None:
    """A float constant, directly or through a DequantizeLinear of a constant."""
    if value is None:
        return None
    if value.const is not None:
        return np.asarray(value.const, dtype=np.float64)
    q = _dequantized(value)
    if q is not None and q.value.const is not None:
        return dequantize_array(q.value.const, q.qp).astype(np.float64)
    return None


def clamp_codes(op: str, bounds: tuple, qp: QuantParams) -> tuple[int, int] | None:
    """Output codes [lo, hi] of Relu (``bounds`` ignored) or Clip(min, max) (float constants or
    None) in front of a quantization with ``qp``: quantization is monotone, so clamping the real
    values and clamping the codes agree."""
    return integer_clamp(qp, 0.0, None) if op == "nn.relu" else integer_clamp(qp, *bounds)


def _clamp_bounds(node: Node) -> tuple | None:
    """(min, max) floats of a Clip (None: unbounded); None when a bound is not constant."""
    bounds = []
    for v in (list(node.inputs) + [None, None])[1:3]:
        if v is None:
            bounds.append(None)
        elif v.const is None:
            return None
        else:
            bounds.append(float(np.asarray(v.const).reshape(())))
    return tuple(bounds)


def _merge_clamps(a: tuple[int, int] | None, b: tuple[int, int] | None) -> tuple[int, int] | None:
    if a is None or b is None:
        return a or b
    return max(a[0], b[0]), min(a[1], b[1])


def _match(graph: Graph, node: Node) -> Match | None:
    """The QDQ pattern around float ``node``, or None."""
    if not node.outputs or any(v.uses or _is_output(graph, v) for v in node.outputs[1:]):
        return None
    value, bias, clamp_node = node.outputs[0], None, None
    while True:
        if _is_output(graph, value) or len(value.uses) != 1:
            return None
        user, index = value.uses[0]
        if user.op == _Q and index == 0:
            break
        if user.op in ("nn.relu", "elementwise.clip") and index == 0 and clamp_node is None:
            clamp_node = user
        elif user.op == "elementwise.add" and bias is None and clamp_node is None \
                and node.op == "linalg.matmul":
            bias = user.inputs[1 - index]
            if _const_of(bias) is None:
                return None
        else:
            return None
        value = user.outputs[0]
    qp = _node_params(user, user.output)
    if qp is None or qp.axis is not None or qp.bitwidth > 16:
        return None
    clamp = None
    if clamp_node is not None:
        bounds = _clamp_bounds(clamp_node) if clamp_node.op == "elementwise.clip" else (None, None)
        if bounds is None:
            return None
        clamp = clamp_codes(clamp_node.op, bounds, qp)
    return Match(node, [_dequantized(v) for v in node.inputs], qp, user.output, clamp, bias)


class _Folder:
    """One fold of ``graph`` (in place)."""

    def __init__(self, graph: Graph):
        self.graph = graph
        self.existing = {id(v) for v in graph.values()}

    def const(self, array, name: str, dtype=np.int32, type: TensorType | None = None) -> Value:
        return self.graph.add_constant(np.asarray(array, dtype=dtype), name, type)

    def requant(self, reals, name: str) -> tuple[Value, Value]:
        multipliers, shifts = quantize_multipliers(reals)
        return self.const(multipliers, f"{name}_multiplier"), self.const(shifts, f"{name}_shift")

    def weight(self, q: QTensor, array: np.ndarray | None = None, qp: QuantParams | None = None
               ) -> Value:
        """The integer weights (``array`` when given, e.g. transposed) as a constant whose type
        carries their QuantParams (``qp`` when given)."""
        qp = q.qp if qp is None else qp
        data = q.value.const if array is None else np.ascontiguousarray(array)
        return self.graph.add_constant(data, f"{q.value.name}_w", type_of(qp, data.shape))

    def bias(self, value: Value | None, q: QTensor | None, scales: np.ndarray, name: str,
             factor: float = 1.0) -> Value | None:
        """int32 bias at ``scales`` (one per output channel): the DequantizeLinear's integers
        when its scale already is ``scales``, else the real bias re-rounded."""
        n = scales.size
        ints = None
        if q is not None and q.value.const is not None and q.qp.bitwidth == 32 and factor == 1.0 \
                and not any(q.qp.zero_point):
            data = np.asarray(q.value.const).reshape(-1)
            own = np.broadcast_to(np.asarray(q.qp.scale), data.shape)
            # Equal up to float32 rounding: ONNX stores the product s_in·s_w as float32.
            if data.size == n and np.allclose(own, scales, rtol=1e-6, atol=0):
                ints = data.astype(np.int32)
        if ints is None:
            real = _const_of(value)
            if real is None or real.size not in (1, n):
                return None
            real = np.broadcast_to(real.reshape(-1), (n,)) * factor
            ints = np.clip(np.rint(real / scales), -2 ** 31, 2 ** 31 - 1).astype(np.int32)
        qp = QuantParams(scales, np.zeros(n, np.int64), 32, True, 0 if n > 1 else None)
        return self.graph.add_constant(ints, f"{name}_bias_q", type_of(qp, ints.shape))

    def emit(self, m: Match, op: str, inputs: list, attrs_: dict, qp: QuantParams | None = None,
             suffix: str = "") -> Value:
        qp = m.qp if qp is None else qp
        node = self.graph.add_node(op, inputs, attrs_, name=f"{m.node.name}{suffix}",
                                   output_types=[type_of(qp, m.sink.type.shape)],
                                   provenance=m.node.provenance, before=m.sink.producer)
        return node.output

    def requantize(self, m: Match, src: QTensor, clamp=None) -> Value:
        """``src`` in the output params (itself when they agree and nothing is clamped)."""
        if src.qp == m.qp and clamp is None:
            return src.value
        left = headroom_shift(1 << src.qp.bitwidth)
        (mult,), (shift,) = quantize_multipliers([src.qp.scale[0] / m.qp.scale[0] / 2.0 ** left])
        attrs_ = {"x_zero_point": src.qp.zero_point[0], "left_shift": left, "multiplier": int(mult),
                  "shift": int(shift), **out_attrs(m.qp, clamp)}
        return self.graph.add_node("qint.requantize", [src.value], attrs_,
                                   name=f"{m.node.name}_requantize",
                                   output_types=[type_of(m.qp, src.value.type.shape)],
                                   provenance=m.node.provenance, before=m.sink.producer).output

    def replace(self, old: Value, new: Value) -> None:
        """``new`` takes ``old``'s uses, and its name unless ``new`` is a tensor of the model
        (a Q/DQ pair that changed nothing); old is left dead for cleanup."""
        name = old.name
        self.graph.replace_all_uses(old, new)
        if id(new) not in self.existing:
            self.graph.rename(old, f"{name}_unfolded")
            self.graph.rename(new, name)


def out_attrs(qp: QuantParams, clamp: tuple[int, int] | None = None) -> dict:
    lo, hi = clamp if clamp is not None else (None, None)
    return {"y_zero_point": qp.zero_point[0], "y_min": lo, "y_max": hi,
            "output_dtype": qdtype(qp.bitwidth, qp.signed)}


def _zero_points(q: QTensor, f: _Folder, name: str) -> Value | None:
    """A weight zero-point input for nonzero zero points (None when all are zero)."""
    if not any(q.qp.zero_point):
        return None
    return f.const(np.asarray(q.qp.zero_point), f"{name}_w_zero_point")


# -- QDQ rules ------------------------------------------------------------------------------

@fold_rule("nn.conv")
def _fold_conv(f: _Folder, m: Match) -> Value | None:
    x, w, b = (m.inputs + [None] * 3)[:3]
    bias_in = m.node.inputs[2] if len(m.node.inputs) > 2 else None
    if x is None or not x.per_tensor or w is None or w.value.const is None or m.bias is not None:
        return None
    if w.qp.axis not in (None, 0) or w.qp.bitwidth > 16:
        return None
    sx = x.qp.scale[0]
    reals = sx * np.asarray(w.qp.scale) / m.qp.scale[0]  # lower.py's expression, for equal integers
    out_channels = w.value.const.shape[0]
    qb = f.bias(bias_in, b, np.broadcast_to(sx * np.asarray(w.qp.scale), (out_channels,)), m.node.name)
    if bias_in is not None and qb is None:
        return None
    multiplier, shift = f.requant(reals, m.node.name)
    conv_attrs = {k: v for k, v in get_op(m.node.op).resolve_attrs(m.node.attrs).items()
                  if k in get_op("nn.conv").attrs}
    attrs_ = {**conv_attrs, "x_zero_point": x.qp.zero_point[0], **out_attrs(m.qp, m.clamp)}
    return f.emit(m, "qint.conv", [x.value, f.weight(w), multiplier, shift, qb,
                                   _zero_points(w, f, m.node.name)], attrs_)


@fold_rule("linalg.gemm")
def _fold_gemm(f: _Folder, m: Match) -> Value | None:
    a, b, c = (m.inputs + [None] * 3)[:3]
    at = get_op(m.node.op).resolve_attrs(m.node.attrs)
    if at["transA"] or a is None or not a.per_tensor or b is None or b.value.const is None:
        return None
    weights, axis = b.value.const, b.qp.axis
    if weights.ndim != 2:
        return None
    if at["transB"]:
        weights, axis = weights.T, {None: None, 0: 1, 1: 0}[axis]
    if axis == 0 or any(b.qp.zero_point):
        return None
    n = weights.shape[1]
    sa, sw = a.qp.scale[0], np.asarray(b.qp.scale)
    alpha, beta = float(at["alpha"]), float(at["beta"])
    reals = alpha * sa * sw / m.qp.scale[0]
    c_in = m.node.inputs[2] if len(m.node.inputs) > 2 else None
    qb = f.bias(c_in, c, np.broadcast_to(sa * sw, (n,)), m.node.name,
                factor=beta / alpha if alpha else 0.0)
    if c_in is not None and qb is None:
        return None
    multiplier, shift = f.requant(reals, m.node.name)
    attrs_ = {"a_zero_point": a.qp.zero_point[0], **out_attrs(m.qp, m.clamp)}
    weight = f.weight(b, weights, attrs.evolve(b.qp, axis=axis))
    return f.emit(m, "qint.matmul", [a.value, weight, multiplier, shift, qb],
                  attrs_)


@fold_rule("linalg.matmul")
def _fold_matmul(f: _Folder, m: Match) -> Value | None:
    a, b = (m.inputs + [None] * 2)[:2]
    if a is None or not a.per_tensor or b is None or b.qp.bitwidth > 16:
        return None
    rank = b.value.type.rank if isinstance(b.value.type, TensorType) else None
    if rank is None or rank < 2 or b.qp.axis not in (None, rank - 1):
        return None
    if b.value.const is None and b.qp.axis is not None:
        return None
    sa, sb = a.qp.scale[0], np.asarray(b.qp.scale)
    reals = sa * sb / m.qp.scale[0]
    qb = None
    if m.bias is not None:
        n = b.value.type.shape[-1]
        if not isinstance(n, int):
            return None
        qb = f.bias(m.bias, _dequantized(m.bias), np.broadcast_to(sa * sb, (n,)).copy(), m.node.name)
        if qb is None:
            return None
    zb = None
    if any(b.qp.zero_point):
        zb = f.const(np.asarray(b.qp.zero_point), f"{m.node.name}_b_zero_point")
    bq = f.weight(b) if b.value.const is not None else b.value
    multiplier, shift = f.requant(reals, m.node.name)
    attrs_ = {"a_zero_point": a.qp.zero_point[0], **out_attrs(m.qp, m.clamp)}
    return f.emit(m, "qint.matmul", [a.value, bq, multiplier, shift, qb, zb], attrs_)


def _binary_inputs(m: Match) -> tuple[QTensor, QTensor] | None:
    a, b = (m.inputs + [None] * 2)[:2]
    if a is None or b is None or not a.per_tensor or not b.per_tensor:
        return None
    return a, b


@fold_rule("elementwise.add")
def _fold_add(f: _Folder, m: Match) -> Value | None:
    pair = _binary_inputs(m)
    if pair is None:
        return None
    (a, b), out_qp = pair, m.qp
    pa, pb = a.qp, b.qp
    # lower.py's scheme (TFLite's): both inputs to a common scale with headroom, then the sum.
    big = 2 * max(pa.scale[0], pb.scale[0])
    left = headroom(pa, pb, out_qp)
    (ma, mb, mo), (sa, sb, so) = quantize_multipliers(
        [pa.scale[0] / big, pb.scale[0] / big, big / (2 ** left * out_qp.scale[0])])
    attrs_ = {"a_zero_point": pa.zero_point[0], "b_zero_point": pb.zero_point[0],
              "a_multiplier": int(ma), "a_shift": int(sa), "b_multiplier": int(mb),
              "b_shift": int(sb), "left_shift": left, "multiplier": int(mo), "shift": int(so),
              **out_attrs(out_qp, m.clamp)}
    return f.emit(m, "qint.add", [a.value, b.value], attrs_)


@fold_rule("elementwise.mul")
def _fold_mul(f: _Folder, m: Match) -> Value | None:
    pair = _binary_inputs(m)
    if pair is None:
        return None
    a, b = pair
    (mult,), (shift,) = quantize_multipliers([a.qp.scale[0] * b.qp.scale[0] / m.qp.scale[0]])
    attrs_ = {"a_zero_point": a.qp.zero_point[0], "b_zero_point": b.qp.zero_point[0],
              "multiplier": int(mult), "shift": int(shift), **out_attrs(m.qp, m.clamp)}
    return f.emit(m, "qint.mul", [a.value, b.value], attrs_)


@fold_rule("tensor.concat")
def _fold_concat(f: _Folder, m: Match) -> Value | None:
    if any(q is None or not q.per_tensor for q in m.inputs):
        return None
    parts = [f.requantize(m, q, m.clamp) for q in m.inputs]
    return f.emit(m, "tensor.concat", parts, dict(m.node.attrs))


#: Data-movement ops run on the integers; tensor.pad is left out (its fill value is real).
_MOVES = {op: index for op, index in PASS_THROUGH.items() if op != "tensor.pad"}


@fold_rule(*_MOVES)
def _fold_move(f: _Folder, m: Match) -> Value | None:
    data = _MOVES[m.node.op]
    src = m.inputs[data]
    if src is None or not src.per_tensor or any(q is not None for i, q in enumerate(m.inputs) if i != data):
        return None
    inputs = list(m.node.inputs)
    inputs[data] = src.value
    moved = f.emit(m, m.node.op, inputs, dict(m.node.attrs), src.qp, suffix="_int")
    return f.requantize(m, QTensor(moved, src.qp), m.clamp)


@fold_rule("nn.relu", "elementwise.clip")
def _fold_clamp(f: _Folder, m: Match) -> Value | None:
    src = m.inputs[0]
    if src is None or not src.per_tensor:
        return None
    bounds = _clamp_bounds(m.node) if m.node.op == "elementwise.clip" else (None, None)
    if bounds is None:
        return None
    clamp = _merge_clamps(clamp_codes(m.node.op, bounds, m.qp), m.clamp)
    if src.qp == m.qp:
        dtype = src.value.type.dtype.numpy
        return f.emit(m, "elementwise.clip", [src.value, f.const(clamp[0], f"{m.node.name}_min", dtype),
                                              f.const(clamp[1], f"{m.node.name}_max", dtype)], {})
    return f.requantize(m, src, clamp)


@fold_rule("nn.average_pool")
def _fold_average_pool(f: _Folder, m: Match) -> Value | None:
    src = m.inputs[0]
    if src is None or not src.per_tensor:
        return None
    pool = get_op("nn.average_pool").resolve_attrs(m.node.attrs)
    attrs_ = {**pool, "x_zero_point": src.qp.zero_point[0],
              "scale_ratio": src.qp.scale[0] / m.qp.scale[0],
              "left_shift": average_shift(src.qp.bitwidth, int(np.prod(pool["kernel_shape"]))),
              **out_attrs(m.qp, m.clamp)}
    return f.emit(m, "qint.average_pool", [src.value], attrs_)


@fold_rule("nn.global_average_pool", "reduce.mean")
def _fold_mean(f: _Folder, m: Match) -> Value | None:
    src = m.inputs[0]
    rank = src.value.type.rank if src is not None else None
    if src is None or not src.per_tensor or rank is None:
        return None
    if m.node.op == "nn.global_average_pool":
        axes, keepdims = list(range(2, rank)), 1
    else:
        at = get_op(m.node.op).resolve_attrs(m.node.attrs)
        given = m.node.inputs[1] if len(m.node.inputs) > 1 else None
        if given is not None and given.const is None:
            return None
        if given is None and at.get("noop_with_empty_axes"):
            return None
        axes = list(range(rank)) if given is None else [int(a) % rank for a in given.const.reshape(-1)]
        keepdims = at["keepdims"]
    shape = src.value.type.shape
    count = None if any(not isinstance(shape[a], int) for a in axes) else \
        int(np.prod([shape[a] for a in axes]))
    attrs_ = {"keepdims": keepdims, "x_zero_point": src.qp.zero_point[0],
              "scale_ratio": src.qp.scale[0] / m.qp.scale[0],
              "left_shift": average_shift(src.qp.bitwidth, count), **out_attrs(m.qp, m.clamp)}
    return f.emit(m, "qint.mean", [src.value, f.const(axes, f"{m.node.name}_axes", np.int64)], attrs_)


@fold_rule(*LOOKUP_OPS)
def _fold_lookup(f: _Folder, m: Match) -> Value | None:
    src = m.inputs[0]
    if src is None or not src.per_tensor or len([v for v in m.node.inputs if v is not None]) != 1:
        return None
    lo, hi = qrange(src.qp)
    opdef = get_op(m.node.op)
    real = opdef.kernel(dequantize_array(np.arange(lo, hi + 1), src.qp), **opdef.resolve_attrs(m.node.attrs))
    table = quantize_array(np.asarray(real, np.float64), m.qp)
    if m.clamp is not None:
        table = np.clip(table, *m.clamp).astype(table.dtype)
    table_value = f.graph.add_constant(table, f"{m.node.name}_table", type_of(m.qp, table.shape))
    return f.emit(m, "qint.lookup", [src.value, table_value], {})


@fold_rule(_DQ)
def _fold_requantize(f: _Folder, m: Match) -> Value | None:
    """DequantizeLinear straight into QuantizeLinear (through at most a Relu/Clip): a change of
    scale, zero point or range."""
    src = _dequantized(m.node.output)
    if src is None or not src.per_tensor:
        return None
    _annotate(src.value, src.qp)
    return f.requantize(m, src, m.clamp)


# -- QOperator rules ------------------------------------------------------------------------

def _qop_params(node: Node, scale: int, zero_point: int, value: Value, axis: int = 0) -> QuantParams | None:
    return params_of(node.inputs[scale], node.inputs[zero_point], axis, value)


def _qop_emit(f: _Folder, node: Node, op: str, inputs: list, attrs_: dict, qp: QuantParams) -> Value:
    return f.graph.add_node(op, inputs, attrs_, name=f"{node.name}_qint",
                            output_types=[type_of(qp, node.output.type.shape)],
                            provenance=node.provenance, before=node).output


@qoperator_rule("quant.qlinear_conv")
def _qlinear_conv(f: _Folder, node: Node) -> Value | None:
    x, w, y = node.inputs[0], node.inputs[3], node.output
    bias = node.inputs[8] if len(node.inputs) > 8 else None
    px, pw, py = (_qop_params(node, 1, 2, x), _qop_params(node, 4, 5, w, 0), _qop_params(node, 6, 7, y))
    if None in (px, pw, py) or px.axis is not None or py.axis is not None or w.const is None:
        return None
    if bias is not None and bias.const is None:
        return None
    multiplier, shift = f.requant(px.scale[0] * np.asarray(pw.scale) / py.scale[0], node.name)
    wq = QTensor(w, pw)
    _annotate(x, px)
    conv_attrs = {k: v for k, v in get_op(node.op).resolve_attrs(node.attrs).items()
                  if k in get_op("nn.conv").attrs}
    attrs_ = {**conv_attrs, "x_zero_point": px.zero_point[0], **out_attrs(py)}
    return _qop_emit(f, node, "qint.conv", [x, f.weight(wq), multiplier, shift,
                                            bias, _zero_points(wq, f, node.name)], attrs_, py)


@qoperator_rule("quant.qlinear_matmul")
def _qlinear_matmul(f: _Folder, node: Node) -> Value | None:
    a, b, y = node.inputs[0], node.inputs[3], node.output
    rank = b.type.rank if isinstance(b.type, TensorType) else None
    if rank is None or rank < 2:
        return None
    pa, pb, py = (_qop_params(node, 1, 2, a), _qop_params(node, 4, 5, b, rank - 1),
                  _qop_params(node, 6, 7, y))
    if None in (pa, pb, py) or pa.axis is not None or py.axis is not None:
        return None
    if pb.axis is not None and b.const is None:
        return None
    multiplier, shift = f.requant(pa.scale[0] * np.asarray(pb.scale) / py.scale[0], node.name)
    zb = f.const(np.asarray(pb.zero_point), f"{node.name}_b_zero_point") if any(pb.zero_point) else None
    bq = f.weight(QTensor(b, pb)) if b.const is not None else b
    _annotate(a, pa)
    _annotate(b, pb)
    attrs_ = {"a_zero_point": pa.zero_point[0], **out_attrs(py)}
    return _qop_emit(f, node, "qint.matmul", [a, bq, multiplier, shift, None, zb], attrs_, py)


# -- boundaries -----------------------------------------------------------------------------

def _fold_inputs(graph: Graph) -> int:
    """Float inputs read only by one kind of QuantizeLinear become quantized inputs."""
    count = 0
    for value in graph.inputs:
        t = value.type
        if not isinstance(t, TensorType) or not t.dtype.is_float or not value.uses:
            continue
        if any(u.node.op != _Q or u.index != 0 for u in value.uses):
            continue
        params = [_node_params(u.node, u.node.output) for u in value.uses]
        qp = params[0]
        if qp is None or qp.axis is not None or qp.bitwidth > 16 or any(p != qp for p in params):
            continue
        for node in {id(u.node): u.node for u in value.uses}.values():
            graph.replace_all_uses(node.output, value)
        value.type = type_of(qp, t.shape)
        count += 1
    return count


def _fold_outputs(graph: Graph) -> int:
    """Outputs made by a per-tensor DequantizeLinear become the quantized tensors."""
    count = 0
    for i, value in enumerate(list(graph.outputs)):
        src = _dequantized(value)
        if src is None or not src.per_tensor or src.value.is_constant or src.value.is_graph_input:
            continue
        if any(src.value is v for v in graph.outputs) or \
                (src.value.type.quant is not None and src.value.type.quant != src.qp):
            continue
        name = value.name
        graph.rename(value, f"{name}_float")
        graph.rename(src.value, name)
        src.value.type = type_of(src.qp, src.value.type.shape)
        graph.outputs[i] = src.value
        count += 1
    return count


def _annotate(value: Value, qp: QuantParams) -> None:
    """Record ``qp`` on an integer tensor's type (what exporters and the runtime read), unless
    it already carries params."""
    t = value.type
    if isinstance(t, TensorType) and t.quant is None and t.dtype == qdtype(qp.bitwidth, qp.signed):
        value.type = type_of(qp, t.shape)


def fold_qdq(graph: Graph) -> int:
    """Rewrite the QDQ and QOperator patterns of a pre-quantized ONNX model (as imported by
    ``qir.load_onnx``) into qint ops, in place; returns the number of ops folded. Graph inputs
    and outputs become quantized tensors where the model quantizes / dequantizes them."""
    folder = _Folder(graph)
    folded = 0
    for node in list(graph.nodes):
        if node.graph is not graph:
            continue
        if node.op in QOPERATOR_RULES:
            new = QOPERATOR_RULES[node.op](folder, node)
            if new is not None:
                folder.replace(node.output, new)
                folded += 1
            continue
        rule = FOLD_RULES.get(node.op)
        m = None if rule is None else _match(graph, node)
        new = None if m is None else rule(folder, m)
        if new is not None:
            for q in m.inputs:
                if q is not None:
                    _annotate(q.value, q.qp)
            folder.replace(m.sink, new)
            folded += 1
    _fold_inputs(graph)
    _fold_outputs(graph)
    dead_code_elimination(graph)
    return folded


@register_pass
@attrs.define
class FoldQdq(Pass):
    """Fold QuantizeLinear/DequantizeLinear patterns and QLinearConv/QLinearMatMul of
    pre-quantized ONNX models into integer qint ops."""

    name = "fold-qdq"
    opt_level = 3  # not in a standard pipeline: run it on pre-quantized ONNX imports

    def run(self, graph: Graph, ctx) -> bool:
        return fold_qdq(graph) > 0


# ============================================================================================
# Export: qint → QDQ
# ============================================================================================

#: The ai.onnx opset of exported QDQ models: onnxruntime runs it, and every op ``to_qdq``
#: writes means the same there as in its newest version for the types written
#: (QDQ_SAME_SINCE lists the ops whose later versions only added element types).
QDQ_OPSET = 21
QDQ_SAME_SINCE = frozenset({
    "QuantizeLinear", "DequantizeLinear", "Conv", "AveragePool", "GlobalAveragePool", "MaxPool",
    "Cast", "Reshape", "Transpose", "Flatten", "Squeeze", "Unsqueeze", "Identity", "Pad",
    "Expand", "Tile", "DepthToSpace", "SpaceToDepth", "Split", "GlobalMaxPool", "Gather",
    "Concat", "Slice",
})

ExportRule = Callable[["_Exporter", Node], Value]
EXPORT_RULES: dict[str, ExportRule] = {}


def export_rule(*ops: str):
    """Register how qint ``ops`` are written as QDQ: ``fn(exporter, node) -> the integer value
    replacing the node's output``."""
    def wrap(fn: ExportRule) -> ExportRule:
        for name in ops:
            EXPORT_RULES[name] = fn
        return fn
    return wrap


def _params_consts(graph: Graph, qp: QuantParams, dtype: DType, name: str,
                   zero_point=None) -> tuple[Value, Value]:
    """float32 scale and typed zero-point constants (scalars per tensor, 1-D per channel)."""
    shape = (-1,) if qp.axis is not None else ()
    scale = np.asarray(qp.scale, np.float32).reshape(shape)
    zp = np.asarray(qp.zero_point if zero_point is None else zero_point).astype(dtype.numpy)
    zp = np.broadcast_to(zp.reshape(-1), (scale.size,)).reshape(shape)
    return (graph.add_constant(scale, f"{name}_scale"),
            graph.add_constant(np.array(zp), f"{name}_zero_point"))


class _Exporter:
    """One rewrite of a copy of a qint graph into QDQ form."""

    def __init__(self, graph: Graph):
        self.graph = graph
        self._dq: dict[int, Value] = {}

    def quant_of(self, value: Value, node: Node) -> QuantParams:
        qp = value.type.quant if isinstance(value.type, TensorType) else None
        if qp is None:
            raise QirError(f"node {node.name} ({node.op}): tensor {value.name!r} has no QuantParams "
                           "on its type, so it cannot be written as DequantizeLinear",
                           hint="export graphs made by the quantize pass (lower.py) or fold-qdq")
        return qp

    def dq(self, value: Value, node: Node, qp: QuantParams | None = None, zero_point=None) -> Value:
        """The float (dequantized) view of integer ``value``, one DequantizeLinear per value."""
        key = id(value)
        if key in self._dq:
            return self._dq[key]
        qp = qp or self.quant_of(value, node)
        scale, zp = _params_consts(self.graph, qp, value.type.dtype, value.name, zero_point)
        where = {"before": node}
        out = self.graph.add_node(_DQ, [value, scale, zp],
                                  {"axis": 1 if qp.axis is None else qp.axis, "block_size": 0},
                                  name=f"{value.name}_DequantizeLinear",
                                  output_names=[f"{value.name}_dequantized"],
                                  provenance=node.provenance, **where).output
        self._dq[key] = out
        return out

    def float_node(self, node: Node, op: str, inputs: list, attrs_: dict | None = None) -> Value:
        return self.graph.add_node(op, inputs, attrs_ or {}, name=f"{node.name}_{op.rsplit('.', 1)[-1]}",
                                   provenance=node.provenance, before=node).output

    def finish(self, node: Node, real: Value) -> Value:
        """Clamp (Relu/Clip) and QuantizeLinear of ``real`` with ``node``'s output params."""
        out = node.output
        qp = self.quant_of(out, node)
        lo_t, hi_t = type_range(out.type.dtype)
        y_min, y_max = node.attrs.get("y_min"), node.attrs.get("y_max")
        lo = lo_t if y_min is None else max(lo_t, int(y_min))
        hi = hi_t if y_max is None else min(hi_t, int(y_max))
        z, s = qp.zero_point[0], qp.scale[0]
        if lo == z and hi == hi_t:
            real = self.float_node(node, "nn.relu", [real])
        elif (lo, hi) != (lo_t, hi_t):
            # Bounds at real codes: QuantizeLinear maps them back to exactly lo / hi.
            bound = [None if code == edge else self.graph.add_constant(
                np.float32((code - z) * s), f"{node.name}_{what}")
                for code, edge, what in ((lo, lo_t, "min"), (hi, hi_t, "max"))]
            real = self.float_node(node, "elementwise.clip", [real, *bound])
        return self.quantize(node, real, qp)

    def quantize(self, node: Node, real: Value, qp: QuantParams) -> Value:
        out = node.output
        scale, zp = _params_consts(self.graph, qp, out.type.dtype, f"{out.name}_q")
        return self.graph.add_node(_Q, [real, scale, zp],
                                   {"axis": 1, "saturate": 1, "block_size": 0,
                                    "output_dtype": out.type.dtype, "precision": None},
                                   name=f"{node.name}_QuantizeLinear",
                                   output_types=[out.type], provenance=node.provenance,
                                   before=node).output

    def bias(self, bias: Value, node: Node, scales: np.ndarray) -> Value:
        """DequantizeLinear of int32 bias at its own params, else at s_in·s_w."""
        qp = bias.type.quant if isinstance(bias.type, TensorType) else None
        if qp is None:
            scales = np.asarray(scales, np.float64).reshape(-1)
            qp = QuantParams(scales, np.zeros(scales.size, np.int64), 32, True,
                             0 if scales.size > 1 else None)
        return self.dq(bias, node, qp)

    def replace(self, node: Node, new: Value) -> None:
        name = node.output.name
        self.graph.rename(node.output, f"{name}_qint")
        self.graph.replace_all_uses(node.output, new)
        self.graph.rename(new, name)
        self.graph.erase_node(node)


def _zero_point_const(value: Value | None):
    return None if value is None or value.const is None else np.asarray(value.const).reshape(-1)


@export_rule("qint.conv")
def _export_conv(ex: _Exporter, node: Node) -> Value:
    x, w, _m, _s, b, wz = (list(node.inputs) + [None] * 6)[:6]
    px, pw = ex.quant_of(x, node), ex.quant_of(w, node)
    inputs = [ex.dq(x, node), ex.dq(w, node, zero_point=_zero_point_const(wz))]
    if b is not None:
        inputs.append(ex.bias(b, node, px.scale[0] * np.asarray(pw.scale)))
    conv_attrs = {k: v for k, v in node.attrs.items() if k in get_op("nn.conv").attrs}
    return ex.finish(node, ex.float_node(node, "nn.conv", inputs, conv_attrs))


@export_rule("qint.matmul")
def _export_matmul(ex: _Exporter, node: Node) -> Value:
    a, b, _m, _s, bias, bz = (list(node.inputs) + [None] * 6)[:6]
    pa, pb = ex.quant_of(a, node), ex.quant_of(b, node)
    real = ex.float_node(node, "linalg.matmul",
                         [ex.dq(a, node), ex.dq(b, node, zero_point=_zero_point_const(bz))])
    if bias is not None:
        real = ex.float_node(node, "elementwise.add",
                             [real, ex.bias(bias, node, pa.scale[0] * np.asarray(pb.scale))])
    return ex.finish(node, real)


@export_rule("qint.add", "qint.mul")
def _export_binary(ex: _Exporter, node: Node) -> Value:
    op = "elementwise.add" if node.op == "qint.add" else "elementwise.mul"
    return ex.finish(node, ex.float_node(node, op, [ex.dq(v, node) for v in node.inputs]))


@export_rule("qint.requantize")
def _export_requantize(ex: _Exporter, node: Node) -> Value:
    return ex.finish(node, ex.dq(node.inputs[0], node))


@export_rule("qint.average_pool")
def _export_average_pool(ex: _Exporter, node: Node) -> Value:
    pool = {k: v for k, v in node.attrs.items() if k in get_op("nn.average_pool").attrs}
    if all(d == 1 for d in pool.get("dilations", ()) or ()):
        # Unit dilations left unwritten: onnxruntime's QDQ fusion into QLinearAveragePool
        # copies the attributes and rejects "dilations" (onnxruntime 1.32).
        pool["dilations"] = ()
    return ex.finish(node, ex.float_node(node, "nn.average_pool", [ex.dq(node.inputs[0], node)], pool))


@export_rule("qint.mean")
def _export_mean(ex: _Exporter, node: Node) -> Value:
    x, axes = (list(node.inputs) + [None])[:2]
    rank = x.type.rank if isinstance(x.type, TensorType) else None
    spatial = axes is not None and axes.const is not None and rank is not None and rank > 2 and \
        sorted(int(a) % rank for a in np.asarray(axes.const).reshape(-1)) == list(range(2, rank))
    if spatial and node.attrs.get("keepdims", 1):
        # GlobalAveragePool: onnxruntime fuses it with its Q/DQ (QLinearGlobalAveragePool).
        return ex.finish(node, ex.float_node(node, "nn.global_average_pool", [ex.dq(x, node)]))
    attrs_ = {"keepdims": node.attrs.get("keepdims", 1),
              "noop_with_empty_axes": node.attrs.get("noop_with_empty_axes", 0)}
    return ex.finish(node, ex.float_node(node, "reduce.mean", [ex.dq(x, node), axes], attrs_))


@export_rule("qint.lookup")
def _export_lookup(ex: _Exporter, node: Node) -> Value:
    """table[x − min]: an exact integer Gather (the op the table came from is not recorded)."""
    x, table = node.inputs
    low, _ = type_range(x.type.dtype)
    index = ex.float_node(node, "elementwise.cast", [x], {"to": DType.INT32})
    if low:
        index = ex.float_node(node, "elementwise.add",
                              [index, ex.graph.add_constant(np.int32(-low), f"{node.name}_offset")])
    return ex.graph.add_node("tensor.gather", [table, index], {"axis": 0}, name=f"{node.name}_gather",
                             output_types=[node.output.type], provenance=node.provenance,
                             before=node).output


def _export_inputs(graph: Graph) -> None:
    """Quantized inputs become float32 inputs of the same name, quantized first thing."""
    for i, value in enumerate(list(graph.inputs)):
        qp = value.type.quant if isinstance(value.type, TensorType) else None
        if qp is None:
            continue
        name = value.name
        graph.rename(value, f"{name}_int")
        real = graph.add_input(name, TensorType(DType.FLOAT32, value.type.shape))
        graph.inputs.pop()
        graph.inputs[i] = real
        scale, zp = _params_consts(graph, qp, value.type.dtype, name)
        first = {"before": graph.nodes[0]} if graph.nodes else {}
        q = graph.add_node(_Q, [real, scale, zp], {"axis": 1, "saturate": 1, "block_size": 0,
                                                   "output_dtype": value.type.dtype, "precision": None},
                           name=f"{name}_QuantizeLinear", output_names=[f"{name}_quantized"],
                           output_types=[value.type], **first)
        graph.replace_all_uses(value, q.output)


def _export_outputs(graph: Graph) -> None:
    """Quantized outputs come back as float32 through DequantizeLinear, under their names."""
    for i, value in enumerate(list(graph.outputs)):
        qp = value.type.quant if isinstance(value.type, TensorType) else None
        if qp is None:
            continue
        name = value.name
        graph.rename(value, f"{name}_quantized")
        scale, zp = _params_consts(graph, qp, value.type.dtype, f"{name}_out")
        dq = graph.add_node(_DQ, [value, scale, zp],
                            {"axis": 1 if qp.axis is None else qp.axis, "block_size": 0},
                            name=f"{name}_DequantizeLinear", output_names=[name])
        graph.outputs[i] = dq.output


def to_qdq(graph: Graph) -> Graph:
    """A copy of qint ``graph`` in QDQ form: only standard ops, float32 inputs and outputs."""
    copy = graph.copy()
    exporter = _Exporter(copy)
    for node in list(copy.nodes):
        rule = EXPORT_RULES.get(node.op)
        if rule is not None:
            exporter.replace(node, rule(exporter, node))
    _export_inputs(copy)
    _export_outputs(copy)
    _implicit_dequantize_types(copy)
    dead_code_elimination(copy)
    return copy


def _implicit_dequantize_types(graph: Graph) -> None:
    """DequantizeLinear's output_dtype left implicit where it is the scale's type: the
    attribute only exists from opset 23 on, later than QDQ_OPSET."""
    for node in graph.nodes:
        if node.op == _DQ and node.attrs.get("output_dtype") is not None:
            scale = node.inputs[1].type
            if isinstance(scale, TensorType) and scale.dtype == node.attrs["output_dtype"]:
                node.attrs["output_dtype"] = None


def export_qdq_onnx(graph: Graph, path: str | Path | None = None, *, opset: int = QDQ_OPSET):
    """``to_qdq(graph)`` as an ONNX ModelProto at ai.onnx ``opset`` (checked with onnx.checker,
    full check), also written to ``path`` when given."""
    from qir.frontends.onnx.exporter import export_onnx, with_opset

    model = with_opset(export_onnx(to_qdq(graph)), opset, QDQ_SAME_SINCE)
    if path is not None:
        Path(path).write_bytes(model.SerializeToString())
    return model
