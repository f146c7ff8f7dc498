"""Lowering a float graph to integer-only ``qint`` ops, given each tensor's QuantParams.

The graph's inputs and outputs become quantized tensors (their types carry the QuantParams;
the runtime quantizes float feeds and dequantizes outputs, as QNN's net-run does). Each node
with an integer rule becomes qint ops on quantized inputs; any other node (an op without a rule,
non-constant weights, a ``float`` override) stays float between ``quant.dequantize_linear`` and
``quant.quantize_linear`` nodes — a missing integer kernel never fails the quantization.

Rules live in ``RULES`` (op name → function), so adding an integer op is one decorated function.
Quantized values keep the float values' names, so encodings files, profiles and the accuracy
debugger speak the source model's tensor names.
"""

from __future__ import annotations

from typing import Callable, Mapping

import attrs
import numpy as np

from qir.errors import QirError
from qir.ir.fixedpoint import quantize_multipliers
from qir.ir.graph import Graph, Node, Value
from qir.ir.opdef import get_op
from qir.ir.types import QuantParams, TensorType
from qir.passes.cleanup import dead_code_elimination
from qir.passes.quantize.config import Config
from qir.passes.quantize.params import (activation_params, bias_params, qdtype, qrange,
                                        quantize_array, dequantize_array, weight_params)


@attrs.define
class QuantPlan:
    """What the lowering needs: activation params by value name, weight params by constant
    name (overrides; otherwise computed from the data), and the nodes that stay float."""

    activations: dict[str, QuantParams]
    config: Config = attrs.field(factory=Config)
    weights: dict[str, QuantParams] = attrs.field(factory=dict)
    float_nodes: set[str] = attrs.field(factory=set)


Rule = Callable[["Lowering", Node], "list[Value] | None"]
RULES: dict[str, Rule] = {}


def rule(*ops: str):
    """Register an integer rule for ``ops``: ``fn(lowering, node) -> [quantized outputs]`` or
    None when this node cannot be lowered (it then stays float)."""
    def wrap(fn: Rule) -> Rule:
        for name in ops:
            RULES[name] = fn
        return fn
    return wrap


def is_float_tensor(value: Value | None) -> bool:
    return value is not None and isinstance(value.type, TensorType) and value.type.dtype.is_float


def type_of(qp: QuantParams, shape) -> TensorType:
    return TensorType(qdtype(qp.bitwidth, qp.signed), shape, qp)


class Lowering:
    """One lowering of ``graph`` (mutated in place) under ``plan``."""

    def __init__(self, graph: Graph, plan: QuantPlan):
        self.graph = graph
        self.plan = plan
        self.config = plan.config
        self._int: dict[int, Value] = {}     # id(float value) -> its quantized twin
        self._float: dict[int, Value] = {}   # id(quantized value) -> its dequantized twin
        self.float_ops: dict[str, int] = {}  # op -> count of nodes left in float

    # -- params ------------------------------------------------------------------------------
    def params(self, value: Value) -> QuantParams:
        """The QuantParams chosen for a float activation."""
        try:
            return self.plan.activations[value.name]
        except KeyError:
            raise QirError(f"tensor {value.name!r} has no quantization range: it was not observed "
                           "during calibration; give it an encoding or keep its node in float") from None

    def weight(self, value: Value, axis: int | None, bias: np.ndarray | None = None,
               input_scale: float = 1.0) -> Value:
        """The constant ``value`` quantized as weights (symmetric, per channel along ``axis``).

        With a ``bias`` (real, one per channel), weight scales grow where needed so that the
        bias fits int32 at scale input_scale × weight scale (tiny input scales would overflow it).
        """
        qp = self.plan.weights.get(value.name)
        if qp is None:
            axis = axis if self.config.per_channel else None
            qp = weight_params(value.const, axis, self.config.param_bitwidth)
        if bias is not None:
            qp = fit_bias(qp, bias, input_scale)
        q = quantize_array(value.const, qp, narrow=True)
        return self.graph.add_constant(q, f"{value.name}_q", type_of(qp, q.shape))

    def constant(self, array, name: str, dtype=np.int32) -> Value:
        return self.graph.add_constant(np.asarray(array, dtype=dtype), name)

    # -- crossing between float and integer ---------------------------------------------------
    def quantized(self, value: Value) -> Value:
        """The quantized twin of float ``value`` (a constant is quantized with its own range)."""
        twin = self._int.get(id(value))
        if twin is not None:
            return twin
        if value.is_constant:
            data = value.const
            qp = self.plan.activations.get(value.name) or activation_params(
                float(np.min(data, initial=0)), float(np.max(data, initial=0)),
                self.config.act_bitwidth, self.config.act_signed)
            q = quantize_array(data, qp)
            twin = self.graph.add_constant(q, f"{value.name}_q", type_of(qp, q.shape))
        else:
            qp = self.params(value)
            scale = self.graph.add_constant(np.float32(qp.scale[0]), f"{value.name}_scale")
            zero_point = self.graph.add_constant(qdtype(qp.bitwidth, qp.signed).numpy.type(qp.zero_point[0]),
                                                 f"{value.name}_zero_point")
            where = {"after": value.producer} if value.producer is not None else \
                ({"before": self.graph.nodes[0]} if self.graph.nodes else {})
            node = self.graph.add_node("quant.quantize_linear", [value, scale, zero_point],
                                       name=f"{value.name}_quantize", output_names=[f"{value.name}_q"],
                                       output_types=[type_of(qp, value.type.shape)],
                                       provenance=value.producer.provenance if value.producer else (),
                                       **where)
            twin = node.output
        self._int[id(value)] = twin
        return twin

    def dequantized(self, q: Value, before: Node | None = None) -> Value:
        """The float twin of quantized ``q``."""
        twin = self._float.get(id(q))
        if twin is None:
            qp = q.type.quant
            scale = self.constant(np.asarray(qp.scale, np.float32).reshape(-1 if qp.axis is not None else ()),
                                  f"{q.name}_scale", np.float32)
            zero_point = self.constant(np.asarray(qp.zero_point).reshape(-1 if qp.axis is not None else ()),
                                       f"{q.name}_zero_point", q.type.dtype.numpy)
            where = {"before": before} if before is not None else (
                {"after": q.producer} if q.producer is not None else {"before": self.graph.nodes[0]})
            node = self.graph.add_node("quant.dequantize_linear", [q, scale, zero_point],
                                       {"axis": qp.axis or 0}, name=f"{q.name}_dequantize",
                                       output_names=[f"{q.name}_dq"],
                                       provenance=q.producer.provenance if q.producer else (), **where)
            twin = node.output
            self._float[id(q)] = twin
            self._int[id(twin)] = q
        return twin

    def emit(self, node: Node, op: str, inputs: list, attrs: dict, qp: QuantParams,
             shape=None, suffix: str = "") -> Value:
        """A qint (or integer-typed) node standing for ``node``'s first output."""
        out = node.outputs[0]
        new = self.graph.add_node(op, inputs, attrs, name=f"{node.name}{suffix}",
                                  output_types=[type_of(qp, out.type.shape if shape is None else shape)],
                                  provenance=node.provenance, before=node)
        return new.output

    def out_attrs(self, qp: QuantParams, clamp: tuple[int, int] | None = None) -> dict:
        lo, hi = clamp if clamp is not None else (None, None)
        return {"y_zero_point": qp.zero_point[0], "y_min": lo, "y_max": hi,
                "output_dtype": qdtype(qp.bitwidth, qp.signed)}

    # -- the walk ----------------------------------------------------------------------------
    def run(self) -> None:
        graph = self.graph
        original = list(graph.nodes)  # not the quantize/dequantize nodes added on the way
        output_names = [v.name for v in graph.outputs]
        for value in list(graph.inputs):
            if is_float_tensor(value):
                self._quantize_input(value)
        for node in original:
            if not any(is_float_tensor(v) for v in node.outputs):
                self._use_float_inputs(node)
                continue
            fn = RULES.get(node.op)
            outs = None if fn is None or self._keep_float(node) else fn(self, node)
            if outs is None:
                self._use_float_inputs(node)
                self.float_ops[node.op] = self.float_ops.get(node.op, 0) + 1
                continue
            self._replace(node, outs)
        self._quantize_outputs(output_names)
        dead_code_elimination(graph)

    def _keep_float(self, node: Node) -> bool:
        return node.name in self.plan.float_nodes

    def _quantize_input(self, value: Value) -> None:
        """A float graph input becomes quantized; its float readers read a dequantize of it."""
        value.type = type_of(self.params(value), value.type.shape)
        readers = list(value.uses)
        self._int[id(value)] = value
        if readers:
            dq = self.dequantized(value, before=self.graph.nodes[0] if self.graph.nodes else None)
            for use in readers:
                use.node.set_input(use.index, dq)

    def _use_float_inputs(self, node: Node) -> None:
        """A node left in float reads the float twins of quantized inputs."""
        for i, value in enumerate(node.inputs):
            if value is not None and id(value) in self._int and value.type.quant is not None:
                node.set_input(i, self.dequantized(value))

    def _replace(self, node: Node, outs: list[Value]) -> None:
        for old, new in zip(node.outputs, outs):
            self._int[id(old)] = new
            if old.uses or any(old is v for v in self.graph.outputs):
                dq = self.dequantized(new)
                self.graph.replace_all_uses(old, dq)
            name = old.name
            self.graph.rename(old, f"{name}_float")
            self.graph.rename(new, name)
        self.graph.erase_node(node)

    def _quantize_outputs(self, names: list[str]) -> None:
        """Graph outputs become the quantized tensors (the runtime dequantizes them), under the
        model's own output names."""
        outputs = []
        for value, name in zip(self.graph.outputs, names):
            q = self._int.get(id(value))
            if q is None and is_float_tensor(value):
                q = self.quantized(value)
            value = value if q is None else q
            if value.name != name:
                holder = next((v for v in self.graph.values() if v.name == name), None)
                if holder is not None:
                    self.graph.rename(holder, f"{name}_float")
                self.graph.rename(value, name)
            outputs.append(value)
        self.graph.outputs = outputs


# -- rules ----------------------------------------------------------------------------------

def integer_clamp(qp: QuantParams, low: float | None, high: float | None) -> tuple[int, int]:
    """The integer bounds standing for clamping reals to [low, high] (None or ±inf: open),
    within ``qp``'s type range."""
    lo, hi = qrange(qp)
    z, s = qp.zero_point[0], qp.scale[0]

    def code(real: float | None, default: int) -> int:
        if real is None or not np.isfinite(real):
            return default
        return int(np.clip(np.rint(real / s) + z, lo, hi))  # clipped in float: never overflows

    return code(low, lo), code(high, hi)


def _clamp_of(node: Node, qp: QuantParams) -> tuple[int, int] | None:
    """The integer clamp standing for a fused ReLU/clip epilogue; None for no epilogue."""
    activation = node.attrs.get("activation", "none")
    if activation == "none":
        return None
    if activation == "relu":
        return integer_clamp(qp, 0.0, None)
    if activation == "clip":
        low, high = (tuple(node.attrs.get("activation_params", ())) + (-np.inf, np.inf))[:2]
        return integer_clamp(qp, low, high)
    raise QirError(f"node {node.name}: the {activation} epilogue has no integer clamp")


CLAMP_ACTIVATIONS = ("none", "relu", "clip")


#: Largest |bias| in accumulator units: int32 with a margin for the rounding of the sum.
BIAS_LIMIT = 2 ** 31 - 2 ** 16


def fit_bias(qp: QuantParams, bias: np.ndarray, input_scale: float) -> QuantParams:
    """``qp`` with each channel's scale raised to at least |bias| / (input_scale × BIAS_LIMIT)."""
    need = np.abs(np.asarray(bias, np.float64).reshape(-1)) / (input_scale * BIAS_LIMIT)
    scale = np.asarray(qp.scale, np.float64)
    if scale.size == 1:
        need = need.max(initial=0.0)
    if np.all(scale >= need):
        return qp
    raised = np.asarray(np.maximum(scale, need * (1 + 1e-6)), np.float32).astype(np.float64)
    return attrs.evolve(qp, scale=raised)


def _requant(lw: Lowering, reals, name: str) -> tuple[Value, Value]:
    multipliers, shifts = quantize_multipliers(reals)
    return lw.constant(multipliers, f"{name}_multiplier"), lw.constant(shifts, f"{name}_shift")


def _bias(lw: Lowering, bias: Value | None, input_scale: float, wq: QuantParams, name: str,
          scale: float = 1.0) -> Value | None:
    if bias is None:
        return None
    if bias.const is None:
        return None
    qp = bias_params(input_scale, wq)
    values = bias.const.astype(np.float64).reshape(-1) * scale
    q = np.clip(np.rint(values / np.asarray(qp.scale)), -2 ** 31, 2 ** 31 - 1).astype(np.int32)
    return lw.graph.add_constant(q, f"{name}_q", type_of(qp, q.shape))


@rule("nn.conv", "fused.conv")
def _conv(lw: Lowering, node: Node) -> list[Value] | None:
    x, w, b, residual = (list(node.inputs) + [None] * 4)[:4]
    if w.const is None or residual is not None or (b is not None and b.const is None):
        return None
    if node.attrs.get("activation", "none") not in CLAMP_ACTIVATIONS:
        return None
    qx = lw.quantized(x)
    sx = qx.type.quant.scale[0]
    qw = lw.weight(w, axis=0, bias=None if b is None else b.const, input_scale=sx)
    out_qp = lw.params(node.output)
    wq = qw.type.quant
    reals = sx * np.asarray(wq.scale) / out_qp.scale[0]
    multiplier, shift = _requant(lw, reals, node.name)
    qb = _bias(lw, b, sx, wq, b.name if b is not None else node.name)
    conv_attrs = {k: v for k, v in get_op(node.op).resolve_attrs(node.attrs).items()
                  if k in get_op("nn.conv").attrs}
    attrs_ = {**conv_attrs, "x_zero_point": qx.type.quant.zero_point[0],
              **lw.out_attrs(out_qp, _clamp_of(node, out_qp))}
    return [lw.emit(node, "qint.conv", [qx, qw, multiplier, shift, qb], attrs_, out_qp)]


@rule("linalg.gemm", "fused.gemm")
def _gemm(lw: Lowering, node: Node) -> list[Value] | None:
    a_, b_, c_ = (list(node.inputs) + [None] * 3)[:3]
    at = get_op(node.op).resolve_attrs(node.attrs)
    if at["transA"] or b_.const is None or (c_ is not None and c_.const is None):
        return None
    if at.get("activation", "none") not in CLAMP_ACTIVATIONS:
        return None
    weights = b_.const.T if at["transB"] else b_.const
    n = weights.shape[1]
    if c_ is not None and c_.const.size not in (1, n):
        return None
    wvalue = lw.graph.add_constant(np.ascontiguousarray(weights), f"{b_.name}_kn")
    qa = lw.quantized(a_)
    sa = qa.type.quant.scale[0]
    alpha, beta = float(at["alpha"]), float(at["beta"])
    real_bias = None if c_ is None or not alpha else \
        np.broadcast_to(c_.const.reshape(-1), (n,)) * beta / alpha
    qb = lw.weight(wvalue, axis=1, bias=real_bias, input_scale=sa)
    out_qp = lw.params(node.output)
    wq = qb.type.quant
    multiplier, shift = _requant(lw, alpha * sa * np.asarray(wq.scale) / out_qp.scale[0], node.name)
    bias = None
    if c_ is not None:
        cvalue = lw.graph.add_constant(np.broadcast_to(c_.const.reshape(-1), (n,)).astype(np.float64),
                                       f"{c_.name}_n")
        bias = _bias(lw, cvalue, sa, wq, c_.name, scale=beta / alpha if alpha else 0.0)
    attrs_ = {"a_zero_point": qa.type.quant.zero_point[0],
              **lw.out_attrs(out_qp, _clamp_of(node, out_qp))}
    return [lw.emit(node, "qint.matmul", [qa, qb, multiplier, shift, bias], attrs_, out_qp)]


@rule("linalg.matmul")
def _matmul(lw: Lowering, node: Node) -> list[Value] | None:
    a_, b_ = node.inputs
    qa = lw.quantized(a_)
    out_qp = lw.params(node.output)
    sa = qa.type.quant.scale[0]
    if b_.const is not None and b_.const.ndim == 2:
        qb = lw.weight(b_, axis=1)
        zb = None
    else:
        qb = lw.quantized(b_)
        zb = lw.constant(np.asarray(qb.type.quant.zero_point, np.int32), f"{node.name}_b_zero_point")
    sb = np.asarray(qb.type.quant.scale)
    multiplier, shift = _requant(lw, sa * sb / out_qp.scale[0], node.name)
    attrs_ = {"a_zero_point": qa.type.quant.zero_point[0], **lw.out_attrs(out_qp)}
    return [lw.emit(node, "qint.matmul", [qa, qb, multiplier, shift, None, zb], attrs_, out_qp)]


def headroom(*qps: QuantParams) -> int:
    """qint.add's left shift: 20 bits for 8-bit operands, 14 for 16-bit (sums stay in int32)."""
    return 20 if max(q.bitwidth for q in qps) <= 8 else 14


def headroom_shift(max_abs: int) -> int:
    """The left shift that keeps an accumulator bounded by ``max_abs`` under 2^30: applied
    before requantizing by a factor near 1, it keeps the two roundings as good as one."""
    return max(0, 30 - int(max_abs).bit_length())


@rule("elementwise.add")
def _add(lw: Lowering, node: Node) -> list[Value] | None:
    qa, qb = (lw.quantized(v) for v in node.inputs)
    pa, pb, out_qp = qa.type.quant, qb.type.quant, lw.params(node.output)
    big = 2 * max(pa.scale[0], pb.scale[0])
    left = headroom(pa, pb, out_qp)
    (ma, mb, m), (sa, sb, s) = quantize_multipliers(
        [pa.scale[0] / big, pb.scale[0] / big, big / (2 ** left * out_qp.scale[0])])
    attrs_ = {"a_zero_point": pa.zero_point[0], "b_zero_point": pb.zero_point[0],
              "a_multiplier": int(ma), "a_shift": int(sa), "b_multiplier": int(mb),
              "b_shift": int(sb), "left_shift": left, "multiplier": int(m), "shift": int(s),
              **lw.out_attrs(out_qp)}
    return [lw.emit(node, "qint.add", [qa, qb], attrs_, out_qp)]


@rule("elementwise.mul")
def _mul(lw: Lowering, node: Node) -> list[Value] | None:
    qa, qb = (lw.quantized(v) for v in node.inputs)
    pa, pb, out_qp = qa.type.quant, qb.type.quant, lw.params(node.output)
    (m,), (s,) = quantize_multipliers([pa.scale[0] * pb.scale[0] / out_qp.scale[0]])
    attrs_ = {"a_zero_point": pa.zero_point[0], "b_zero_point": pb.zero_point[0],
              "multiplier": int(m), "shift": int(s), **lw.out_attrs(out_qp)}
    return [lw.emit(node, "qint.mul", [qa, qb], attrs_, out_qp)]


def requantized(lw: Lowering, q: Value, qp: QuantParams, node: Node, clamp=None) -> Value:
    """``q`` in the params ``qp`` (itself when they already agree and nothing is clamped)."""
    if q.type.quant == qp and clamp is None:
        return q
    return requantize_node(lw.graph, q, qp, node, lw.out_attrs(qp, clamp))


def requantize_node(graph: Graph, q: Value, qp: QuantParams, node: Node, out_attrs: dict) -> Value:
    """A qint.requantize of ``q`` into ``qp`` before ``node`` (with headroom for the factor)."""
    left = headroom_shift(1 << q.type.quant.bitwidth)
    (m,), (s,) = quantize_multipliers([q.type.quant.scale[0] / qp.scale[0] / 2.0 ** left])
    attrs_ = {"x_zero_point": q.type.quant.zero_point[0], "left_shift": left, "multiplier": int(m),
              "shift": int(s), **out_attrs}
    return graph.add_node("qint.requantize", [q], attrs_, name=f"{node.name}_requantize",
                          output_types=[type_of(qp, q.type.shape)], provenance=node.provenance,
                          before=node).output


def average_shift(bitwidth: int, count: int | None) -> int:
    """The headroom of a sum of ``count`` ``bitwidth``-bit values (0 when the count is unknown)."""
    return 0 if count is None else headroom_shift(count << bitwidth)


@rule("tensor.concat")
def _concat(lw: Lowering, node: Node) -> list[Value] | None:
    out_qp = lw.params(node.output)
    parts = [requantized(lw, lw.quantized(v), out_qp, node) for v in node.inputs]
    return [lw.emit(node, "tensor.concat", parts, dict(node.attrs), out_qp)]


#: Ops that move or select values without arithmetic: they run on the integers as they are,
#: their outputs keep the input's params. The value is the index of the data input.
PASS_THROUGH = {op: 0 for op in (
    "tensor.reshape", "tensor.transpose", "tensor.flatten", "tensor.squeeze", "tensor.unsqueeze",
    "tensor.identity", "tensor.slice", "tensor.gather", "tensor.expand", "tensor.tile",
    "tensor.depth_to_space", "tensor.space_to_depth", "tensor.split", "nn.max_pool",
    "nn.global_max_pool", "reduce.max", "reduce.min", "tensor.pad", "tensor.resize")}


@rule(*PASS_THROUGH)
def _pass_through(lw: Lowering, node: Node) -> list[Value] | None:
    data = PASS_THROUGH[node.op]
    if len(node.outputs) > 1 and node.op == "nn.max_pool" and any(v.uses for v in node.outputs[1:]):
        return None
    if node.op == "tensor.resize" and get_op(node.op).resolve_attrs(node.attrs)["mode"] != "nearest":
        return None  # interpolation does arithmetic: float fallback
    q = lw.quantized(node.inputs[data])
    qp = q.type.quant
    inputs = list(node.inputs)
    inputs[data] = q
    if node.op == "tensor.pad":
        if node.attrs.get("mode", "constant") != "constant":
            return None
        fill = inputs[2] if len(inputs) > 2 else None
        real = 0.0 if fill is None or fill.const is None else float(fill.const)
        if len(inputs) > 2 and fill is not None and fill.const is None:
            return None
        qfill = quantize_array(np.asarray(real), qp)
        inputs = (inputs + [None] * 3)[:3]
        inputs[2] = lw.graph.add_constant(qfill, f"{node.name}_pad_value")
    n_out = len(node.outputs) if node.op != "nn.max_pool" else 1
    new = lw.graph.add_node(node.op, inputs, dict(node.attrs), name=f"{node.name}",
                            output_types=[type_of(qp, v.type.shape) for v in node.outputs[:n_out]],
                            provenance=node.provenance, before=node)
    return list(new.outputs)


@rule("nn.relu", "elementwise.clip")
def _clamp(lw: Lowering, node: Node) -> list[Value] | None:
    q = lw.quantized(node.inputs[0])
    if node.op == "nn.relu":
        low, high = integer_clamp(q.type.quant, 0.0, None)
    else:
        bounds = [None if v is None else v.const for v in (list(node.inputs) + [None, None])[1:3]]
        if any(v is not None and b is None for v, b in zip(node.inputs[1:3], bounds)):
            return None
        low, high = integer_clamp(q.type.quant, *(None if b is None else float(b) for b in bounds))
    dtype = q.type.dtype.numpy
    new = lw.graph.add_node("elementwise.clip", [q, lw.constant(low, f"{node.name}_min", dtype),
                                                 lw.constant(high, f"{node.name}_max", dtype)],
                            name=node.name, output_types=[q.type], provenance=node.provenance,
                            before=node)
    return [new.output]


@rule("nn.average_pool")
def _average_pool(lw: Lowering, node: Node) -> list[Value] | None:
    q = lw.quantized(node.inputs[0])
    out_qp = lw.params(node.output)
    pool = get_op("nn.average_pool").resolve_attrs(node.attrs)
    attrs_ = {**pool, "x_zero_point": q.type.quant.zero_point[0],
              "scale_ratio": q.type.quant.scale[0] / out_qp.scale[0],
              "left_shift": average_shift(q.type.quant.bitwidth, int(np.prod(pool["kernel_shape"]))),
              **lw.out_attrs(out_qp)}
    return [lw.emit(node, "qint.average_pool", [q], attrs_, out_qp)]


@rule("nn.global_average_pool", "reduce.mean")
def _mean(lw: Lowering, node: Node) -> list[Value] | None:
    x = node.inputs[0]
    rank = x.type.rank
    if rank is None:
        return None
    if node.op == "nn.global_average_pool":
        axes, keepdims = list(range(2, rank)), 1
    else:
        at = get_op(node.op).resolve_attrs(node.attrs)
        given = node.inputs[1] if len(node.inputs) > 1 else None
        if given is not None and given.const is None:
            return None
        axes = list(range(rank)) if given is None else [int(a) % rank for a in given.const.reshape(-1)]
        keepdims = at["keepdims"]
        if given is None and at.get("noop_with_empty_axes"):
            return None
    q = lw.quantized(x)
    out_qp = lw.params(node.output)
    shape = x.type.shape
    count = None if any(not isinstance(shape[a], int) for a in axes) else int(np.prod([shape[a] for a in axes]))
    attrs_ = {"keepdims": keepdims, "x_zero_point": q.type.quant.zero_point[0],
              "scale_ratio": q.type.quant.scale[0] / out_qp.scale[0],
              "left_shift": average_shift(q.type.quant.bitwidth, count), **lw.out_attrs(out_qp)}
    axes_value = lw.constant(np.asarray(axes, np.int64), f"{node.name}_axes", np.int64)
    return [lw.emit(node, "qint.mean", [q, axes_value], attrs_, out_qp)]


#: Unary float ops that become a lookup table on 8/16-bit inputs: exact for every input code.
LOOKUP_OPS = ("nn.sigmoid", "nn.tanh", "nn.hard_sigmoid", "nn.hard_swish", "nn.leaky_relu",
              "nn.elu", "nn.selu", "nn.gelu", "nn.softplus", "nn.mish", "nn.celu",
              "elementwise.exp", "elementwise.erf", "elementwise.sqrt", "elementwise.neg",
              "elementwise.abs", "nn.thresholded_relu", "nn.softsign")


@rule(*[name for name in LOOKUP_OPS])
def _lookup(lw: Lowering, node: Node) -> list[Value] | None:
    if len([v for v in node.inputs if v is not None]) != 1:
        return None
    q = lw.quantized(node.inputs[0])
    in_qp, out_qp = q.type.quant, lw.params(node.output)
    lo, hi = qrange(in_qp)
    codes = np.arange(lo, hi + 1)
    real = dequantize_array(codes, in_qp)
    opdef = get_op(node.op)
    table = quantize_array(np.asarray(opdef.kernel(real, **opdef.resolve_attrs(node.attrs)), np.float64),
                           out_qp)
    table_value = lw.graph.add_constant(table, f"{node.name}_table", type_of(out_qp, table.shape))
    return [lw.emit(node, "qint.lookup", [q, table_value], {}, out_qp)]


def lower(graph: Graph, plan: QuantPlan) -> dict[str, int]:
    """Lower ``graph`` in place; returns the op counts of nodes left in float."""
    lowering = Lowering(graph, plan)
    lowering.run()
    return lowering.float_ops


def plan_from_ranges(graph: Graph, ranges: Mapping[str, tuple[float, float]], config: Config,
                     bits: Mapping[str, int] | None = None,
                     fixed: Mapping[str, QuantParams] | None = None) -> QuantPlan:
    """A QuantPlan: activation params from calibrated ``ranges`` (``bits`` per value overrides
    the config's bitwidth; ``fixed`` params, e.g. from an encodings file, win)."""
    bits = bits or {}
    fixed = fixed or {}
    activations = {}
    for name, (lo, hi) in ranges.items():
        activations[name] = fixed.get(name) or activation_params(
            lo, hi, bits.get(name, config.act_bitwidth), config.act_signed)
    for name, qp in fixed.items():
        activations.setdefault(name, qp)
    return QuantPlan(activations, config)


__all__ = ["QuantPlan", "RULES", "rule", "lower", "plan_from_ranges", "Lowering"]
