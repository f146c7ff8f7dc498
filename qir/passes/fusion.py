"""Fusion passes: fold BatchNorm and per-channel affine ops into weights, fuse conv/gemm epilogues
(bias, residual add, activation) into ``fused.*`` ops, fold Pad into Conv/pooling, and turn a 2-D
MatMul + Add into a Gemm. Each pass is a handful of rewrite patterns (qir.passes.pattern) driven
to a fixpoint; every node a rewrite creates carries the provenance of all the nodes it replaces.

Numerics: folded weights are computed in float64 and rounded once to the weights' dtype.
Weights that are not constants (computed at run time) get a Mul instead, which constant folding
removes once they are constant. ``logging.getLogger("qir.passes.fusion").setLevel(DEBUG)``
logs why each pattern did or did not fire at each node.
"""

from __future__ import annotations

import logging
from typing import Any

import attrs
import numpy as np

from qir.ir.graph import Value
from qir.ir.opdef import get_op
from qir.ir.ops.fused import ACTIVATIONS, activation_of
from qir.ir.ops.infer import broadcast_shapes
from qir.passes.pattern import Const, Match, Op, Pattern, Rewriter, Var, apply_patterns
from qir.passes.registry import Pass, register_pass

_log = logging.getLogger(__name__)

CONV = "nn.conv"
FUSED_CONV = "fused.conv"


# -- helpers -------------------------------------------------------------------------------

def _shape(value: Value | None):
    return None if value is None or value.type is None else getattr(value.type, "shape", None)


def _apply(graph, patterns) -> bool:
    """Drive ``patterns``; with DEBUG logging on for this module, every attempt is logged (why
    a pattern did not fire at a node, or that it fired)."""
    trace = _log.debug if _log.isEnabledFor(logging.DEBUG) else None
    return bool(apply_patterns(graph, patterns, trace=trace))


def _base(node) -> str:
    """The name a replacement of ``node`` asks for: its first source node's (no suffix pile-up)."""
    return node.provenance[0] if node.provenance else node.name


def _inference_bn(node) -> bool:
    """BatchNormalization in inference mode whose extra outputs (if any) nobody reads."""
    a = get_op(node.op).resolve_attrs(node.attrs)
    return not a["training_mode"] and all(not o.uses for o in node.outputs[1:])


def _bn_scale_shift(m: Match) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel (s, t) with BN(x) = x·s + t, in float64."""
    eps = m.attrs("bn")["epsilon"]
    scale, bias, mean, var = (m.const(k).astype(np.float64) for k in ("scale", "bias", "mean", "var"))
    s = scale / np.sqrt(var + eps)
    return s, bias - mean * s


def _channel_vector(array: np.ndarray, channels: Any, rank: int | None) -> np.ndarray | None:
    """``array`` as a [C] vector when it broadcasts per channel over axis 1 of a rank-``rank``
    tensor with ``channels`` channels (shapes [C,1,..], [1,C,1,..], scalars...), else None."""
    if rank is None or not isinstance(channels, int) or array.ndim > rank:
        return None
    full = (1,) * (rank - array.ndim) + array.shape
    if any(d != 1 for i, d in enumerate(full) if i != 1) or full[1] not in (1, channels):
        return None
    return np.broadcast_to(array.reshape(-1), (channels,)) if array.size else None


def _same_rank_out(value: Value) -> tuple[Any, int | None]:
    shape = _shape(value)
    return (None, None) if shape is None or len(shape) < 2 else (shape[1], len(shape))


# -- fold-batchnorm ------------------------------------------------------------------------

def _fold_bn_conv(m: Match, rw: Rewriter):
    conv = m.node("conv")
    w = m.const("w")
    s, t = _bn_scale_shift(m)
    if w.shape[0] != s.shape[0]:
        return rw.fail(f"BN has {s.shape[0]} channels, the conv {w.shape[0]} filters")
    b = m.const("b")
    b64 = np.zeros(w.shape[0]) if b is None else b.astype(np.float64)
    new_w = (w.astype(np.float64) * s.reshape((-1,) + (1,) * (w.ndim - 1))).astype(w.dtype)
    new_b = (b64 * s + t).astype(w.dtype)
    return rw.op(conv.op, [m["x"], rw.constant(new_w, f"{m['w'].name}_bn"), rw.constant(new_b, f"{conv.name}_bias"),
                           *conv.inputs[3:]], dict(conv.attrs), name=_base(conv))


def _fold_bn_conv_weights(m: Match, rw: Rewriter):
    """Weights computed at run time: scale them with a Mul (which constant folding removes once
    they are constant); as many nodes as Conv + BN, and no BN left."""
    conv = m.node("conv")
    s, t = _bn_scale_shift(m)
    shape = _shape(m["w"])
    if shape is None or not isinstance(shape[0], int) or shape[0] != s.shape[0]:
        return rw.fail(f"the conv weights' shape {shape} does not match the BN's {s.shape[0]} channels")
    dtype = m["w"].type.dtype.numpy
    b = m.const("b")
    new_b = t if b is None else b.astype(np.float64) * s + t
    return rw.op(conv.op, [m["x"], _scaled_weights(m, rw, s, "bn"), rw.constant(new_b.astype(dtype), f"{_base(conv)}_bias"),
                           *conv.inputs[3:]], dict(conv.attrs), name=_base(conv))


def _fold_bn_gemm(m: Match, rw: Rewriter):
    gemm = m.node("gemm")
    a = m.attrs("gemm")
    w = m.const("w")
    s, t = _bn_scale_shift(m)
    n = w.shape[0] if a["transB"] else w.shape[1]
    if n != s.shape[0]:
        return rw.fail(f"BN has {s.shape[0]} channels, the gemm {n} outputs")
    new_w = w.astype(np.float64) * (s[:, None] if a["transB"] else s[None, :])
    c = m.const("c")
    c_term = 0.0 if c is None else a["beta"] * c.astype(np.float64) * s
    new_c = np.asarray(c_term + t)
    attrs_ = {**gemm.attrs, "beta": 1.0}
    return rw.op("linalg.gemm", [m["a"], rw.constant(new_w.astype(w.dtype), f"{m['w'].name}_bn"),
                                 rw.constant(new_c.astype(w.dtype), f"{gemm.name}_bias")], attrs_, name=_base(gemm))


def _fold_bn_matmul(m: Match, rw: Rewriter):
    w = m.const("w")
    s, t = _bn_scale_shift(m)
    if w.shape[1] != s.shape[0]:
        return rw.fail(f"BN has {s.shape[0]} channels, the matmul {w.shape[1]} outputs")
    new_w = (w.astype(np.float64) * s[None, :]).astype(w.dtype)
    mm = m.node("mm")
    return rw.op("linalg.gemm", [m["a"], rw.constant(new_w, f"{m['w'].name}_bn"),
                                 rw.constant(t.astype(w.dtype), f"{mm.name}_bias")], name=_base(mm))


def _bn_to_affine(m: Match, rw: Rewriter):
    x = m["x"]
    shape = _shape(x)
    s, t = _bn_scale_shift(m)
    dtype = x.type.dtype.numpy
    tail = (1,) * (len(shape) - 2)
    bn = m.node("bn")
    scaled = rw.op("elementwise.mul", [x, rw.constant(s.reshape((-1,) + tail).astype(dtype), f"{bn.name}_scale")],
                   name=f"{bn.name}_mul")
    return rw.op("elementwise.add", [scaled, rw.constant(t.reshape((-1,) + tail).astype(dtype), f"{bn.name}_shift")],
                 name=f"{bn.name}_add")


def _rank_at_least_2(v: Value) -> bool:
    shape = _shape(v)
    return shape is not None and len(shape) >= 2


BN = "nn.batch_normalization"
_FOLD_BN = [
    Pattern("bn-into-conv",
            Op(BN, Op(CONV, Var("x"), Const("w"), Const("b", optional=True), name="conv", single_use=True),
               Const("scale"), Const("bias"), Const("mean"), Const("var"), name="bn", where=_inference_bn),
            _fold_bn_conv, benefit=3),
    Pattern("bn-into-conv-weights",
            Op(BN, Op(CONV, Var("x"), Var("w", where=lambda v: v.const is None), Const("b", optional=True),
                      name="conv", single_use=True),
               Const("scale"), Const("bias"), Const("mean"), Const("var"), name="bn", where=_inference_bn),
            _fold_bn_conv_weights, benefit=2),
    Pattern("bn-into-gemm",
            Op(BN, Op("linalg.gemm", Var("a"), Const("w", where=lambda w: w.ndim == 2),
                      Const("c", optional=True), name="gemm", single_use=True),
               Const("scale"), Const("bias"), Const("mean"), Const("var"), name="bn", where=_inference_bn),
            _fold_bn_gemm, benefit=3),
    Pattern("bn-into-matmul",
            Op(BN, Op("linalg.matmul", Var("a", where=lambda v: _shape(v) is not None and len(_shape(v)) == 2),
                      Const("w", where=lambda w: w.ndim == 2), name="mm", single_use=True),
               Const("scale"), Const("bias"), Const("mean"), Const("var"), name="bn", where=_inference_bn),
            _fold_bn_matmul, benefit=3),
    Pattern("bn-to-mul-add",
            Op(BN, Var("x", where=_rank_at_least_2), Const("scale"), Const("bias"), Const("mean"),
               Const("var"), name="bn", where=_inference_bn),
            _bn_to_affine, benefit=1),
]


# Per-channel Mul/Add by constants after a conv fold into its weights and bias (as BN does);
# chains of them merge, so that a standalone BN plus a scale/shift becomes one Mul and one Add.

def _per_channel(m: Match) -> np.ndarray | None:
    """The constant ``c`` as a [C] vector when it is per-channel over the conv output and the
    Mul/Add keeps that output's shape; else None."""
    y = m.node("conv").output
    if _shape(m.root.output) != _shape(y):
        return None
    channels, rank = _same_rank_out(y)
    return _channel_vector(m.const("c"), channels, rank)


def _scaled_weights(m: Match, rw: Rewriter, s: np.ndarray, suffix: str) -> Value:
    """The conv weights times per-output-channel ``s``: folded when they are constant, else a
    Mul (which merges with other Muls of the weights, and folds once they are constant)."""
    w, conv = m["w"], m.node("conv")
    rank = len(_shape(w))
    factor = s.reshape((-1,) + (1,) * (rank - 1))
    if w.const is not None:
        return rw.constant((w.const.astype(np.float64) * factor).astype(w.const.dtype), f"{w.name}_{suffix}")
    scale = rw.constant(factor.astype(w.type.dtype.numpy), f"{_base(conv)}_{suffix}")
    return rw.op(MUL, [w, scale], name=f"{_base(conv)}_weights")


def _fold_mul_into_conv(m: Match, rw: Rewriter):
    s = _per_channel(m)
    if s is None:
        return rw.fail("the multiplier is not a per-channel constant of the conv output")
    conv, b = m.node("conv"), m.const("b")
    s = s.astype(np.float64)
    inputs = [m["x"], _scaled_weights(m, rw, s, "scaled")]
    if b is not None:
        inputs.append(rw.constant((b.astype(np.float64) * s).astype(b.dtype), f"{_base(conv)}_bias"))
    return rw.op(CONV, inputs, dict(conv.attrs), name=_base(conv))


def _fold_add_into_conv(m: Match, rw: Rewriter):
    t = _per_channel(m)
    if t is None:
        return rw.fail("the addend is not a per-channel constant of the conv output")
    conv = m.node("conv")
    b = m.const("b")
    new_b = t.astype(np.float64) + (0.0 if b is None else b.astype(np.float64))
    dtype = m["w"].type.dtype.numpy
    return rw.op(conv.op, [m["x"], m["w"], rw.constant(new_b.astype(dtype), f"{_base(conv)}_bias"), *conv.inputs[3:]],
                 dict(conv.attrs), name=_base(conv))


def _same_shape_out(m: Match) -> bool:
    return _shape(m.root.output) is not None and _shape(m.root.output) == _shape(m["x"])


def _merge_chain(op: str, combine):
    def build(m: Match, rw: Rewriter):
        c1, c2 = m.const("c1"), m.const("c2")
        merged = combine(c1.astype(np.float64), c2.astype(np.float64)).astype(c1.dtype)
        if merged.ndim > len(_shape(m["x"])):
            return rw.fail("the merged constant would widen the output")
        kind = "scale" if op == MUL else "shift"
        return rw.op(op, [m["x"], rw.constant(merged, f"{_base(m.root)}_{kind}")], name=_base(m.root))
    return build


def _swap_mul_add(m: Match, rw: Rewriter):
    """(x + a)·b → x·b + a·b, so that a Mul after an Add can merge with a Mul before it."""
    a, b = m.const("c1").astype(np.float64), m.const("c2").astype(np.float64)
    dtype = m.const("c1").dtype
    base = _base(m.root)
    scaled = rw.op(MUL, [m["x"], rw.constant(b.astype(dtype), f"{base}_scale")], name=f"{base}_mul")
    return rw.op(ADD, [scaled, rw.constant((a * b).astype(dtype), f"{base}_shift")], name=base)


def _scaled_once(v: Value) -> bool:
    """A single-use output of a Mul or Conv, which a Mul moved in front of the Add merges with."""
    return v.producer is not None and v.producer.op in (MUL, CONV) and len(v.uses) == 1


def _small(c: np.ndarray) -> bool:
    return c.dtype.kind == "f" and c.size <= 1 << 16


ADD, MUL = "elementwise.add", "elementwise.mul"
_CONV_W = (Var("x"), Var("w", where=lambda v: _shape(v) is not None), Const("b", optional=True))
_FOLD_AFFINE = [
    Pattern("mul-into-conv",
            Op(MUL, Op(CONV, *_CONV_W, name="conv", single_use=True), Const("c", where=_small),
               name="mul", commutative=True),
            _fold_mul_into_conv, benefit=2),
    Pattern("add-into-conv",
            Op(ADD, Op(CONV, *_CONV_W, name="conv", single_use=True), Const("c", where=_small),
               name="add", commutative=True),
            _fold_add_into_conv, benefit=2),
    Pattern("merge-mul-mul",
            Op(MUL, Op(MUL, Var("x"), Const("c1", where=_small), single_use=True, commutative=True),
               Const("c2", where=_small), commutative=True),
            _merge_chain(MUL, np.multiply), where=[("the shape is kept", _same_shape_out)]),
    Pattern("merge-add-add",
            Op(ADD, Op(ADD, Var("x"), Const("c1", where=_small), single_use=True, commutative=True),
               Const("c2", where=_small), commutative=True),
            _merge_chain(ADD, np.add), where=[("the shape is kept", _same_shape_out)]),
    Pattern("swap-add-mul",
            Op(MUL, Op(ADD, Var("x", where=_scaled_once), Const("c1", where=_small), single_use=True,
                       commutative=True),
               Const("c2", where=_small), commutative=True),
            _swap_mul_add, where=[("the shape is kept", _same_shape_out)]),
]

def _fold_bn_patterns() -> list[Pattern]:
    return _FOLD_BN + _FOLD_AFFINE


@register_pass
@attrs.define
class FoldBatchNorm(Pass):
    """Fold inference BatchNorm (and per-channel Mul/Add) into the Conv/Gemm/MatMul before it;
    a standalone BatchNorm becomes Mul + Add, merged with neighbouring scale/shift ops."""

    name = "fold-batchnorm"
    opt_level = 1

    def run(self, graph, ctx) -> bool:
        return _apply(graph, _fold_bn_patterns())


# -- epilogue fusion -----------------------------------------------------------------------

def _epilogue_ops(node) -> int:
    """How many epilogue ops (residual add, activation) a conv-like node already holds."""
    if node.op != FUSED_CONV:
        return 0
    a = get_op(node.op).resolve_attrs(node.attrs)
    return int(len(node.inputs) > 3 and node.inputs[3] is not None) + int(a["activation"] != "none")


def _open_conv(*, allow_residual: bool) -> Op:
    """A conv (plain or fused, without activation yet) whose output only the epilogue reads."""

    def ok(node) -> bool:
        if node.op == CONV:
            return True
        a = get_op(node.op).resolve_attrs(node.attrs)
        has_residual = len(node.inputs) > 3 and node.inputs[3] is not None
        return a["activation"] == "none" and (allow_residual or not has_residual)

    return Op((CONV, FUSED_CONV), Var("x"), Var("w"), Var("b", optional=True), Var("r", optional=True),
              name="conv", where=ok, single_use=True)


def _fused_attrs(conv, **epilogue) -> dict[str, Any]:
    base = {k: v for k, v in conv.attrs.items() if k not in ("activation", "activation_params")}
    if conv.op == FUSED_CONV:
        a = get_op(FUSED_CONV).resolve_attrs(conv.attrs)
        base["activation"], base["activation_params"] = a["activation"], a["activation_params"]
    for k, v in epilogue.items():
        base[k] = v
    return base


def _absorb_activation(max_ops: int):
    def build(m: Match, rw: Rewriter):
        conv = m.node("conv")
        if _epilogue_ops(conv) + 1 > max_ops:
            return rw.fail(f"the conv already holds {_epilogue_ops(conv)} epilogue op(s) (max-ops={max_ops})")
        found = activation_of(m.root)
        if found is None:
            return rw.fail(f"{m.root.op} with these inputs is not an epilogue activation")
        act, params = found
        return rw.op(FUSED_CONV, [m["x"], m["w"], m["b"], m["r"]],
                     _fused_attrs(conv, activation=act, activation_params=params), name=_base(conv))
    return build


def _absorb_residual(max_ops: int):
    def build(m: Match, rw: Rewriter):
        conv, residual = m.node("conv"), m["res"]
        if _epilogue_ops(conv) + 1 > max_ops:
            return rw.fail(f"the conv already holds {_epilogue_ops(conv)} epilogue op(s) (max-ops={max_ops})")
        out, rshape = _shape(conv.output), _shape(residual)
        if out is None or rshape is None or len(rshape) > len(out) or broadcast_shapes(out, rshape) != tuple(out) \
                or _shape(m.root.output) != out:
            return rw.fail("the residual's shape would widen the conv output (or is unknown)")
        if residual.type.dtype != conv.output.type.dtype:
            return rw.fail("the residual has another dtype")
        return rw.op(FUSED_CONV, [m["x"], m["w"], m["b"], residual], _fused_attrs(conv), name=_base(conv))
    return build


def _absorb_gemm_activation(m: Match, rw: Rewriter):
    found = activation_of(m.root)
    if found is None:
        return rw.fail(f"{m.root.op} with these inputs is not an epilogue activation")
    gemm = m.node("gemm")
    act, params = found
    return rw.op("fused.gemm", list(gemm.inputs), {**gemm.attrs, "activation": act, "activation_params": params},
                 name=_base(gemm))


_ACT_OPS = tuple(a.op for a in ACTIVATIONS.values() if a is not None)


def _activation_patterns(max_ops: int) -> list[Pattern]:
    conv_act = Pattern("conv-activation", Op(_ACT_OPS, _open_conv(allow_residual=True), Var(optional=True),
                                             Var(optional=True)),
                       _absorb_activation(max_ops), benefit=2)
    return [conv_act]


def _residual_patterns(max_ops: int) -> list[Pattern]:
    return [Pattern("conv-residual",
                    Op((ADD, "elementwise.sum"), _open_conv(allow_residual=False), Var("res"), commutative=True),
                    _absorb_residual(max_ops), benefit=1)]


_GEMM_ACT = Pattern("gemm-activation",
                    Op(_ACT_OPS, Op("linalg.gemm", Var("a"), Var("b"), Var("c", optional=True), name="gemm",
                                    single_use=True), Var(optional=True), Var(optional=True)),
                    _absorb_gemm_activation)


@register_pass
@attrs.define
class FuseConvActivation(Pass):
    """Fuse a Relu/Clip/LeakyRelu/... that only reads a Conv into a fused.conv."""

    name = "fuse-conv-activation"
    opt_level = 3

    def run(self, graph, ctx) -> bool:
        return _apply(graph, _activation_patterns(max_ops=2))


@register_pass
@attrs.define
class FuseEpilogue(Pass):
    """Fuse a conv's epilogue (per-channel bias add, residual add, activation) into fused.conv,
    and a Gemm's activation into fused.gemm. max-ops bounds the epilogue ops (residual add,
    activation) one fused.conv absorbs; bias adds fold into the conv's bias and do not count."""

    name = "fuse-epilogue"
    opt_level = 3
    max_ops: int = 3

    def run(self, graph, ctx) -> bool:
        patterns = [*_FOLD_AFFINE[1:2], *_residual_patterns(self.max_ops), *_activation_patterns(self.max_ops),
                    _GEMM_ACT]
        return _apply(graph, patterns)


# -- fold-pad ------------------------------------------------------------------------------

def _zero_pad(m: Match) -> list[int] | None:
    """The Pad's [begins..., ends...] over all axes when it is a constant-mode, non-negative pad
    of the spatial axes only with the neutral value of the consumer; else None."""
    pad = m.node("pad")
    if get_op(pad.op).resolve_attrs(pad.attrs)["mode"] != "constant":
        return None
    shape = _shape(m["x"])
    if shape is None:
        return None
    rank = len(shape)
    pads = [int(p) for p in m.const("pads").reshape(-1)]
    axes = list(range(rank)) if m["axes"] is None else [int(a) % rank for a in m.const("axes").reshape(-1)]
    if len(pads) != 2 * len(axes):
        return None
    full = [0] * (2 * rank)
    for k, axis in enumerate(axes):
        full[axis] += pads[k]
        full[rank + axis] += pads[k + len(axes)]
    if any(p < 0 for p in full) or full[0] or full[1] or full[rank] or full[rank + 1]:
        return None
    return full


def _pad_value(m: Match) -> float:
    v = m.const("value")
    return 0.0 if v is None or v.size == 0 else float(v.reshape(-1)[0])


def _fold_pad(m: Match, rw: Rewriter):
    full = _zero_pad(m)
    if full is None:
        return rw.fail("the Pad is not a constant-mode, non-negative pad of spatial axes only")
    node = m.root
    a = get_op(node.op).resolve_attrs(node.attrs)
    rank = len(full) // 2
    n = rank - 2
    value = _pad_value(m)
    if a["auto_pad"] not in ("NOTSET", "VALID", ""):
        return rw.fail(f"auto_pad={a['auto_pad']} would move the padding")
    own = [0] * (2 * n) if a["auto_pad"] == "VALID" or not a["pads"] else [int(p) for p in a["pads"]]
    attrs_ = dict(node.attrs)
    if node.op == CONV:
        if value != 0.0:
            return rw.fail(f"the Pad value is {value}, a conv pads with 0")
    elif node.op == "nn.average_pool":
        if value != 0.0 or a["ceil_mode"]:
            return rw.fail("average pooling folds only a zero Pad without ceil_mode")
        if not a["count_include_pad"] and any(own):
            return rw.fail("the pool has its own pads that it does not count")
        attrs_["count_include_pad"] = 1
    elif node.op == "nn.max_pool":
        if value != -np.inf or a["ceil_mode"] or len(node.outputs) > 1:
            return rw.fail("max pooling folds only a -inf Pad, without ceil_mode or indices")
    spatial = full[2:rank] + full[rank + 2:]
    attrs_["pads"] = tuple(p + q for p, q in zip(own, spatial))
    if "auto_pad" in attrs_:
        attrs_["auto_pad"] = "NOTSET"
    return list(rw.add(node.op, [m["x"], *node.inputs[1:]], attrs_, name=_base(node),
                       num_outputs=len(node.outputs)).outputs)


_PAD = Op("tensor.pad", Var("x"), Const("pads"), Const("value", optional=True), Const("axes", optional=True),
          name="pad")
_FOLD_PAD = [Pattern(f"pad-into-{op.split('.')[1]}", Op(op, _PAD, *rest), _fold_pad)
             for op, rest in ((CONV, (Var("w"), Var("b", optional=True))), ("nn.average_pool", ()),
                              ("nn.max_pool", ()))]


@register_pass
@attrs.define
class FoldPad(Pass):
    """Fold a constant zero Pad of the spatial axes into the Conv/AveragePool (or a -inf Pad into
    the MaxPool) that reads it."""

    name = "fold-pad"
    opt_level = 2

    def run(self, graph, ctx) -> bool:
        return _apply(graph, _FOLD_PAD)


# -- matmul-add-to-gemm --------------------------------------------------------------------

def _matmul_add(m: Match, rw: Rewriter):
    a, b, c = _shape(m["a"]), _shape(m["b"]), _shape(m["c"])
    if a is None or b is None or c is None or len(a) != 2 or len(b) != 2:
        return rw.fail("MatMul operands are not both 2-D (or their shapes are unknown)")
    out = _shape(m.node("mm").output)
    if len(c) > 2 or broadcast_shapes(out, c) != tuple(out) or _shape(m.root.output) != out:
        return rw.fail(f"the addend of shape {c} does not broadcast to the MatMul output {out}")
    return rw.op("linalg.gemm", [m["a"], m["b"], m["c"]], name=_base(m.node("mm")))


_MATMUL_ADD = Pattern("matmul-add-to-gemm",
                      Op(ADD, Op("linalg.matmul", Var("a"), Var("b"), name="mm", single_use=True), Var("c"),
                         commutative=True),
                      _matmul_add)


@register_pass
@attrs.define
class MatMulAddToGemm(Pass):
    """Turn a 2-D MatMul followed by an Add of a (broadcastable) bias into one Gemm."""

    name = "matmul-add-to-gemm"
    opt_level = 2

    def run(self, graph, ctx) -> bool:
        return _apply(graph, [_MATMUL_ADD])
