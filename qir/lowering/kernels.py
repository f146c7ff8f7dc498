"""Kernel-level lowering for SIMD CPU targets: per node a kernel choice with explicit schedule
data, a tensor layout per value, and the static memory plan of one arena.

    isa = VectorISA("avx512", lanes=16, registers=32)
    lowered = lower_graph(graph, isa)          # graph: static shapes (bind dims first)
    lowered.kernels["conv1"].schedule          # ConvSchedule("direct_nhwc", GemmSchedule(mr=7, nv=4, lanes=16), ...)
    lowered.fallback["topk"]                   # why a node has no kernel: it runs its reference kernel
    lowered.plan                               # qir.lowering.memory.MemoryPlan (arena offsets)

Everything a code generator needs to decide is here as plain data (tile sizes, vector width,
layouts, weight packing shapes); the generators (qir/targets/kryo) only follow it. A node gets a
kernel when its ``KERNEL_RULES`` entry accepts it; any other node is a *fallback*: it runs its
numpy reference kernel between the generated segments, so a missing kernel never fails a compile.

Layouts. A 4-D activation lives either ``plain`` (the IR's row-major NCHW) or ``nhwc``
(channels innermost: a pixel's channels are one contiguous row, which is what the register-blocked
convolution, depthwise and pooling kernels broadcast from and vectorize over; it is NCHWc with
the block c = C, so a convolution's K loop runs over all input channels of a tap at once). A value is ``nhwc``
only when its producer can write NHWC and every reader accepts it; graph inputs, outputs and
everything fallback nodes read (or their subgraphs capture) stay ``plain``. A kernel whose input or output is ``plain`` converts
through scratch memory (``NodeKernel.scratch``), which sits after the memory plan's arena.
"""

from __future__ import annotations

import math
from typing import Callable

import attrs

from qir.ir.graph import Graph, Node, Value
from qir.ir.opdef import get_op
from qir.ir.ops.fused import ACTIVATIONS, activation_of
from qir.ir.ops.nn import auto_pads, out_size
from qir.ir.types import DType, TensorType
from qir.lowering.memory import MemoryPlan, captured_values, plan_memory, resolve_shape

PLAIN = "plain"
NHWC = "nhwc"


# -- schedule data -------------------------------------------------------------------------

@attrs.frozen
class VectorISA:
    """The vector unit code is generated for: fp32 ``lanes`` per register and how many registers."""

    name: str
    lanes: int
    registers: int
    fma: bool = True


@attrs.frozen
class GemmSchedule:
    """A register tile of ``mr`` rows × ``nv`` vectors (``nr = nv·lanes`` columns), the K loop
    unrolled ``unroll`` times. Weights are packed at compile time as panels ``[K][nr]``."""

    mr: int
    nv: int
    lanes: int
    unroll: int = 4

    @property
    def nr(self) -> int:
        return self.nv * self.lanes


@attrs.frozen
class ConvSchedule:
    """A 2-D convolution on NHWC activations.

    ``kind``: ``direct_nhwc`` (register-blocked implicit GEMM: ``mr`` consecutive output pixels of
    one row × ``nr`` output channels, the K loop over taps × input channels; also used for GEMMs and
    1×1 convs, whose rows are then flat) or ``depthwise`` (``mr`` pixels × one channel vector, taps
    unrolled; border pixels check their taps). ``pad_copy``: the input is copied into a zero-haloed
    NHWC scratch buffer first (direct convs with pads), so the inner loops have no bounds checks.
    """

    kind: str
    gemm: GemmSchedule
    pad_copy: bool
    flat_rows: bool = False


@attrs.frozen
class ConvGeometry:
    """Static shapes of one convolution-like kernel (per image)."""

    n: int
    c: int
    h: int
    w: int
    m: int
    oh: int
    ow: int
    kh: int
    kw: int
    sh: int
    sw: int
    dh: int
    dw: int
    pads: tuple[int, int, int, int]  # top, left, bottom, right
    groups: int

    @property
    def hp(self) -> int:
        return self.h + self.pads[0] + self.pads[2]

    @property
    def wp(self) -> int:
        return self.w + self.pads[1] + self.pads[3]

    def flops(self) -> int:
        return 2 * self.n * self.oh * self.ow * self.m * (self.c // self.groups) * self.kh * self.kw


@attrs.frozen
class Epilogue:
    """What follows the accumulation: bias (packed), residual add (a value), activation."""

    bias: bool = False
    residual: bool = False
    activation: str = "none"
    params: tuple[float, ...] = ()


@attrs.frozen
class PoolSchedule:
    """Max/average pooling on NHWC, vectorized over channels; windows clipped at run time."""

    kind: str  # "max" | "avg" | "global_max" | "global_avg"
    lanes: int
    count_include_pad: bool = False


@attrs.frozen
class EltwiseSchedule:
    """A flat elementwise map: ``mode`` says how the second operand broadcasts (``same``,
    ``scalar``, ``channel``: a constant per channel of a 4-D value, ``row``: a constant along the
    last axis); ``swap`` puts the broadcast operand first."""

    op: str
    lanes: int
    mode: str = "same"
    swap: bool = False
    params: tuple[float, ...] = ()


@attrs.frozen
class ConcatSchedule:
    """Concatenation (or its inverse, split) as ``outer`` rows: each input contributes
    consecutive floats per row (NHWC along channels: rows are pixels; plain: rows are the dims
    before ``axis``)."""

    axis: int
    lanes: int


@attrs.frozen
class RowSchedule:
    """A reduction over the last ``length`` floats of each of ``rows`` rows, then a map:
    ``softmax`` or ``layer_norm`` (plain layout; ``eps`` for layer norm)."""

    kind: str
    rows: int
    length: int
    lanes: int
    eps: float = 0.0
    bias: bool = False
    inner: int = 1  # softmax over an inner axis: the row's floats are ``inner`` apart


@attrs.frozen
class NodeKernel:
    """The kernel chosen for one node: its kind, schedule, geometry, epilogue, the layout of each
    activation input and output, and the scratch bytes it needs while it runs."""

    node: str
    kernel: str  # conv, gemm, matmul, pool, eltwise, concat, split, rows, transpose, attention, lrn
    schedule: object
    geometry: ConvGeometry | None = None
    epilogue: Epilogue = Epilogue()
    scratch: int = 0


@attrs.frozen
class WeightSlot:
    """A packed constant in the weights blob: ``size`` floats at float offset ``offset``."""

    offset: int
    size: int


@attrs.frozen
class LoweredGraph:
    """A graph ready for code generation: kernels, fallbacks, layouts, memory plan, weights."""

    graph: Graph
    isa: VectorISA
    kernels: dict[str, NodeKernel]
    fallback: dict[str, str]
    layouts: dict[str, str]
    plan: MemoryPlan
    scratch_size: int
    weights: dict[tuple[str, str], WeightSlot]
    weights_size: int

    def segments(self) -> list[tuple[str, list[Node]]]:
        """The node order cut into runs: ("kernel", nodes) compiled, ("fallback", [node]) Python."""
        out: list[tuple[str, list[Node]]] = []
        for node in self.graph.nodes:
            kind = "kernel" if node.name in self.kernels else "fallback"
            if kind == "kernel" and out and out[-1][0] == "kernel":
                out[-1][1].append(node)
            else:
                out.append((kind, [node]))
        return out

    def report(self) -> str:
        """Which nodes got which kernel, and which fall back and why."""
        lines = [f"kryo lowering for {self.isa.name} ({self.isa.lanes} fp32 lanes): "
                 f"{len(self.kernels)} kernels, {len(self.fallback)} fallback nodes",
                 self.plan.summary(), f"scratch: {self.scratch_size} B, packed weights: "
                 f"{self.weights_size * 4} B"]
        for name, why in self.fallback.items():
            lines.append(f"  fallback {name}: {why}")
        return "\n".join(lines)


# -- helpers -------------------------------------------------------------------------------

class Unsupported(Exception):
    """A rule's reason why a node gets no kernel (becomes the fallback reason)."""


def _shape(v: Value | None) -> tuple[int, ...]:
    if v is None:
        raise Unsupported("missing input")
    shape, why = resolve_shape(v, {})
    if shape is None:
        raise Unsupported(f"%{v.name}: {why}")
    return shape


def _f32(v: Value) -> None:
    if not isinstance(v.type, TensorType) or v.type.dtype is not DType.FLOAT32:
        raise Unsupported(f"%{v.name} is {v.type}, kernels are fp32 only")


def _attrs(node: Node) -> dict:
    return get_op(node.op).resolve_attrs(node.attrs)


def gemm_schedule(isa: VectorISA, n_cols: int) -> GemmSchedule:
    """The register tile for ``n_cols`` output columns (channels): as wide as the register file
    allows (7×4 vectors with 32 registers, 6×2 with 16), narrower when there are few columns."""
    nv_max = 4 if isa.registers >= 32 else 2
    nv = max(1, min(nv_max, math.ceil(n_cols / isa.lanes)))
    # accumulators + weight vectors (+ one broadcast register, except with AVX-512, whose FMAs
    # take the broadcast activation as an embedded memory operand: 7×4 zmm tiles fit 32 registers)
    budget = isa.registers - nv - (0 if isa.registers >= 32 else 1)
    mr = max(1, min(budget // nv, 7 if isa.registers >= 32 else 6))
    if isa.registers < 32 and nv == 1:
        mr = 6
    return GemmSchedule(mr=mr, nv=nv, lanes=isa.lanes)


# -- rules: node -> NodeKernel ------------------------------------------------------------

Rule = Callable[[Node, VectorISA], NodeKernel]
KERNEL_RULES: dict[str, Rule] = {}


def rule(*ops: str):
    """Register a kernel rule for ``ops``; it returns a NodeKernel or raises Unsupported."""
    def wrap(fn: Rule) -> Rule:
        for name in ops:
            KERNEL_RULES[name] = fn
        return fn
    return wrap


def _epilogue_of(node: Node, a: dict) -> Epilogue:
    act = a.get("activation", "none")
    if act not in ACTIVATIONS:
        raise Unsupported(f"activation {act!r}")
    spec = ACTIVATIONS[act]
    params = tuple(float(p) for p in a.get("activation_params", ()))
    if spec is not None:
        params = params + spec.defaults[len(params):]
    return Epilogue(activation=act, params=params)



def conv_geometry(a: dict, xs, ws, ys) -> "ConvGeometry":
    """The 2-D convolution geometry of resolved conv attributes ``a`` and static shapes (input,
    weights, output); Unsupported when pads are negative or the output shape disagrees."""
    kh, kw = ws[2], ws[3]
    strides = list(a["strides"]) or [1, 1]
    dil = list(a["dilations"]) or [1, 1]
    pads = auto_pads(a["auto_pad"], xs[2:], [kh, kw], strides, dil, a["pads"] or None)
    if any(p < 0 for p in pads):
        raise Unsupported("negative pads")
    n, c, h, wd = xs
    if ys[2] != out_size(h, kh, strides[0], dil[0], pads[0], pads[2]) or ys[3] != out_size(
            wd, kw, strides[1], dil[1], pads[1], pads[3]):
        raise Unsupported("output shape does not match the convolution geometry")
    return ConvGeometry(n, c, h, wd, ws[0], ys[2], ys[3], kh, kw, strides[0], strides[1], dil[0],
                        dil[1], (pads[0], pads[1], pads[2], pads[3]), int(a["group"]))


@rule("nn.conv", "fused.conv")
def _conv_rule(node: Node, isa: VectorISA) -> NodeKernel:
    x, w = node.inputs[0], node.inputs[1]
    b = node.inputs[2] if len(node.inputs) > 2 else None
    res = node.inputs[3] if len(node.inputs) > 3 else None
    for v in (x, w, node.output):
        _f32(v)
    xs, ws, ys = _shape(x), _shape(w), _shape(node.output)
    if len(xs) != 4:
        raise Unsupported(f"only 2-D convolutions (input rank {len(xs)})")
    if w.const is None:
        raise Unsupported("weights are not constant")
    if b is not None and (b.const is None or b.type.dtype is not DType.FLOAT32):
        raise Unsupported("bias is not a constant fp32 tensor")
    if res is not None:
        _f32(res)
        if res.const is not None or _shape(res) != ys:
            raise Unsupported("residual must be a computed tensor of the output's shape")
    a = _attrs(node)
    geo = conv_geometry(a, xs, ws, ys)
    pads, groups, c, m = geo.pads, geo.groups, geo.c, geo.m
    ep = attrs.evolve(_epilogue_of(node, a), bias=b is not None, residual=res is not None)
    padded = any(pads)
    if groups == c == m and groups > 1:
        # depthwise reads its input in place and checks the taps of border pixels
        sched = ConvSchedule("depthwise", GemmSchedule(mr=7 if isa.registers >= 32 else 4, nv=1,
                                                       lanes=isa.lanes), pad_copy=False)
    else:
        flat = geo.kh == geo.kw == 1 and geo.sh == geo.sw == 1 and not padded
        sched = ConvSchedule("direct_nhwc", gemm_schedule(isa, m // groups), pad_copy=padded,
                             flat_rows=flat)
    return NodeKernel(node.name, "conv", sched, geo, ep)


@rule("linalg.gemm", "fused.gemm", "linalg.matmul")
def _gemm_rule(node: Node, isa: VectorISA) -> NodeKernel:
    """A GEMM with a constant B becomes a 1×1 "conv" over flat rows (same micro-kernel)."""
    a_, b_ = node.inputs[0], node.inputs[1]
    c_ = node.inputs[2] if len(node.inputs) > 2 else None
    for v in (a_, b_, node.output):
        _f32(v)
    if b_.const is None:  # nothing to pack: the row kernel reads B in place
        return _matmul_rt_rule(node, isa)
    at = _attrs(node) if node.op != "linalg.matmul" else {"transA": 0, "transB": 0, "alpha": 1.0,
                                                          "beta": 1.0}
    if at["transA"]:
        raise Unsupported("transA=1")
    as_, bs, ys = _shape(a_), _shape(b_), _shape(node.output)
    if len(bs) != 2 or len(as_) < 2:
        raise Unsupported("B must be 2-D and A at least 2-D")
    k = as_[-1]
    n_out = bs[0] if at["transB"] else bs[1]
    rows = math.prod(as_[:-1])
    residual = False
    if c_ is not None:
        _f32(c_)
        if c_.const is None:
            if _shape(c_) != ys or float(at["beta"]) != 1.0:
                raise Unsupported("a computed C must have the output's shape and beta=1")
            residual = True
        elif c_.const.size not in (1, n_out) or (c_.const.ndim == 2 and c_.const.shape[1] != n_out
                                                 and c_.const.size != 1):
            raise Unsupported(f"constant C of shape {c_.const.shape} is not a row bias")
    ep = attrs.evolve(_epilogue_of(node, at), bias=c_ is not None and not residual, residual=residual)
    geo = ConvGeometry(1, k, 1, rows, n_out, 1, rows, 1, 1, 1, 1, 1, 1, (0, 0, 0, 0), 1)
    sched = ConvSchedule("direct_nhwc", gemm_schedule(isa, n_out), pad_copy=False, flat_rows=True)
    return NodeKernel(node.name, "gemm", sched, geo, ep)


@attrs.frozen
class MatmulSchedule:
    """A product whose B is computed (batched MatMul, attention's q·kᵀ, Gemm with B an input):
    work items are rows of A; per row, vectors of output columns accumulate over K (B as is) or
    each output is a dot product along K (transB). ``a_offsets`` / ``b_offsets``: the float offset
    of each output batch's A and B matrices (batch broadcasting as numpy.matmul); C (Gemm)
    broadcasts through ``c_strides`` (row, column; 0 repeats), None when there is no C."""

    batch: int
    m: int
    n: int
    k: int
    trans_a: bool
    trans_b: bool
    a_offsets: tuple[int, ...]
    b_offsets: tuple[int, ...]
    lanes: int
    alpha: float = 1.0
    beta: float = 1.0
    c_strides: tuple[int, int] | None = None


#: Most output batches of a MatmulSchedule (their offsets become constant tables in the code).
MAX_MATMUL_BATCH = 1 << 16


def _batch_offsets(shape: tuple[int, ...], out: tuple[int, ...], size: int) -> tuple[int, ...]:
    """Float offset of each batch of ``out`` in an operand with batch dims ``shape`` (broadcast)."""
    import numpy as np

    idx = np.arange(math.prod(shape), dtype=np.int64).reshape(shape)
    return tuple(int(v) * size for v in np.broadcast_to(idx, out).reshape(-1))


def _matmul_rt_rule(node: Node, isa: VectorISA) -> NodeKernel:
    a_, b_ = node.inputs[0], node.inputs[1]
    c_ = node.inputs[2] if len(node.inputs) > 2 else None
    as_, bs = _shape(a_), _shape(b_)
    _shape(node.output)
    if node.op == "linalg.matmul":  # numpy.matmul: 1-D operands get a dim of 1, batch dims broadcast
        at = {"transA": 0, "transB": 0, "alpha": 1.0, "beta": 1.0}
        lhs = (1, *as_) if len(as_) == 1 else as_
        rhs = (*bs, 1) if len(bs) == 1 else bs
    else:
        at = _attrs(node)
        lhs, rhs = as_, bs
    ta, tb = bool(at["transA"]), bool(at["transB"])
    m, k = (lhs[-1], lhs[-2]) if ta else (lhs[-2], lhs[-1])
    n = rhs[-2] if tb else rhs[-1]
    try:
        import numpy as np

        out_batch = tuple(np.broadcast_shapes(lhs[:-2], rhs[:-2]))
    except ValueError as exc:
        raise Unsupported(f"batch dims {lhs[:-2]} and {rhs[:-2]} do not broadcast") from exc
    batch = math.prod(out_batch)
    if batch > MAX_MATMUL_BATCH:
        raise Unsupported(f"{batch} batches (at most {MAX_MATMUL_BATCH})")
    c_strides = None
    if c_ is not None:
        _f32(c_)
        cs = _shape(c_)
        cm, cn = ((1, 1) + cs)[-2:]
        if len(cs) > 2 or cm not in (1, m) or cn not in (1, n):
            raise Unsupported(f"C of shape {cs} does not broadcast to [{m}, {n}]")
        c_strides = (cn if cm > 1 else 0, 1 if cn > 1 else 0)
    sched = MatmulSchedule(batch, m, n, k, ta, tb, _batch_offsets(lhs[:-2], out_batch, m * k),
                           _batch_offsets(rhs[:-2], out_batch, k * n), isa.lanes, float(at["alpha"]),
                           float(at["beta"]), c_strides)
    return NodeKernel(node.name, "matmul", sched, epilogue=_epilogue_of(node, at))


def _pool_geometry(node: Node, x: Value, y: Value, a: dict) -> ConvGeometry:
    xs, ys = _shape(x), _shape(y)
    if len(xs) != 4:
        raise Unsupported(f"only 2-D pooling (input rank {len(xs)})")
    k = list(a.get("kernel_shape") or xs[2:])
    strides = list(a.get("strides") or ()) or [1, 1]
    dil = list(a.get("dilations") or ()) or [1, 1]
    if dil != [1, 1]:
        raise Unsupported("dilated pooling")
    # ceil_mode=1 only adds output pixels whose windows the kernel clips (the output shape,
    # inferred by the op, says how many)
    pads = auto_pads(a.get("auto_pad", "NOTSET"), xs[2:], k, strides, dil, a.get("pads") or None)
    if any(p < 0 for p in pads) or pads[0] >= k[0] or pads[1] >= k[1]:
        raise Unsupported("pads as large as the window")
    n, c, h, w = xs
    return ConvGeometry(n, c, h, w, c, ys[2], ys[3], k[0], k[1], strides[0], strides[1], 1, 1,
                        (pads[0], pads[1], pads[2], pads[3]), c)


@rule("nn.max_pool", "nn.average_pool")
def _pool_rule(node: Node, isa: VectorISA) -> NodeKernel:
    x = node.inputs[0]
    _f32(x)
    if len(node.outputs) > 1 and not _unused(node.outputs[1], node.graph):
        raise Unsupported("max_pool indices are used")
    a = _attrs(node)
    geo = _pool_geometry(node, x, node.outputs[0], a)
    kind = "max" if node.op == "nn.max_pool" else "avg"
    return NodeKernel(node.name, "pool", PoolSchedule(kind, isa.lanes, bool(a.get("count_include_pad", 0))),
                      geo)


@rule("nn.global_average_pool", "nn.global_max_pool")
def _global_pool_rule(node: Node, isa: VectorISA) -> NodeKernel:
    x = node.inputs[0]
    _f32(x)
    xs = _shape(x)
    if len(xs) != 4:
        raise Unsupported(f"only 4-D inputs (rank {len(xs)})")
    n, c, h, w = xs
    geo = ConvGeometry(n, c, h, w, c, 1, 1, h, w, 1, 1, 1, 1, (0, 0, 0, 0), c)
    kind = "global_avg" if node.op == "nn.global_average_pool" else "global_max"
    return NodeKernel(node.name, "pool", PoolSchedule(kind, isa.lanes), geo)


#: Unary elementwise ops with a generated kernel, and how their float params are read.
UNARY_OPS: dict[str, tuple[str, ...]] = {
    "nn.relu": (), "nn.sigmoid": (), "nn.tanh": (), "nn.hard_swish": (),
    "nn.leaky_relu": ("alpha",), "nn.hard_sigmoid": ("alpha", "beta"),
    "elementwise.neg": (), "elementwise.abs": (), "elementwise.sqrt": (), "elementwise.exp": (),
    "elementwise.clip": (), "tensor.identity": (), "nn.gelu": (), "elementwise.erf": (),
}
BINARY_OPS = ("elementwise.add", "elementwise.sub", "elementwise.mul", "elementwise.div", "elementwise.pow")


@rule(*UNARY_OPS)
def _unary_rule(node: Node, isa: VectorISA) -> NodeKernel:
    x = node.inputs[0]
    _f32(x)
    _f32(node.output)
    _shape(x)
    if node.op == "elementwise.clip":
        act = activation_of(node)
        if act is None:
            raise Unsupported("clip bounds are not constant scalars")
        return NodeKernel(node.name, "eltwise", EltwiseSchedule("clip", isa.lanes, params=act[1]))
    a = _attrs(node)
    params = tuple(float(a[p]) for p in UNARY_OPS[node.op])
    if node.op == "nn.gelu":  # two kernels: erf-based (exact) and the tanh approximation
        if a["approximate"] not in ("none", "tanh"):
            raise Unsupported(f"approximate={a['approximate']!r}")
        return NodeKernel(node.name, "eltwise", EltwiseSchedule(f"gelu_{a['approximate']}", isa.lanes))
    return NodeKernel(node.name, "eltwise", EltwiseSchedule(node.op, isa.lanes, params=params))


@rule(*BINARY_OPS)
def _binary_rule(node: Node, isa: VectorISA) -> NodeKernel:
    a_, b_ = node.inputs
    for v in (a_, b_, node.output):
        _f32(v)
    as_, bs, ys = _shape(a_), _shape(b_), _shape(node.output)
    if as_ == bs == ys:
        return NodeKernel(node.name, "eltwise", EltwiseSchedule(node.op, isa.lanes, "same"))
    for swap, (big, small) in ((False, (a_, b_)), (True, (b_, a_))):
        if _shape(big) != ys:
            continue
        if math.prod(_shape(small)) == 1:
            return NodeKernel(node.name, "eltwise", EltwiseSchedule(node.op, isa.lanes, "scalar", swap))
        ss = _shape(small)
        if (small.const is not None and len(ys) == 4 and len(ss) in (3, 4)
                and ss[-3:] == (ys[1], 1, 1) and math.prod(ss) == ys[1]):
            return NodeKernel(node.name, "eltwise", EltwiseSchedule(node.op, isa.lanes, "channel", swap))
        if ss and ss[-1] == ys[-1] and math.prod(ss) == ys[-1]:
            # a bias along the last axis (transformers): the row repeats over the flat data
            # (constant: packed; computed: read in place, it is plain as every non-4-D value)
            return NodeKernel(node.name, "eltwise", EltwiseSchedule(node.op, isa.lanes, "row", swap))
    raise Unsupported(f"broadcast of {as_} with {bs} (same shape, scalar, or a constant per "
                      f"channel or along the last axis only)")


COPY_OPS = ("tensor.reshape", "tensor.flatten", "tensor.squeeze", "tensor.unsqueeze")


@rule(*COPY_OPS)
def _copy_rule(node: Node, isa: VectorISA) -> NodeKernel:
    x = node.inputs[0]
    _f32(x)
    if math.prod(_shape(x)) != math.prod(_shape(node.output)):
        raise Unsupported("element counts differ")
    return NodeKernel(node.name, "eltwise", EltwiseSchedule("tensor.identity", isa.lanes))


@rule("tensor.concat")
def _concat_rule(node: Node, isa: VectorISA) -> NodeKernel:
    for v in list(node.inputs) + [node.output]:
        if v is None:
            raise Unsupported("missing input")
        _f32(v)
        if v.const is not None:
            raise Unsupported("constant inputs")
    rank = len(_shape(node.output))
    axis = int(_attrs(node)["axis"])
    axis = axis + rank if axis < 0 else axis
    if not 0 <= axis < rank:
        raise Unsupported(f"axis {axis} out of range")
    return NodeKernel(node.name, "concat", ConcatSchedule(axis, isa.lanes))


@attrs.frozen
class TransposeSchedule:
    """A permutation copy (plain layout): the output walked in order, the input gathered with
    strides; the innermost output dim is a scalar loop, the outermost is split across threads."""

    shape: tuple[int, ...]  # input shape, after merging axes that stay adjacent
    perm: tuple[int, ...]


def _merge_axes(shape: tuple[int, ...], perm: tuple[int, ...]) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Drop size-1 axes and merge input axes that stay adjacent and in order in the output."""
    keep = [a for a in perm if shape[a] != 1]
    groups: list[list[int]] = []
    for a in keep:
        if groups and groups[-1][-1] + 1 == a and all(shape[x] == 1 for x in range(groups[-1][-1] + 1, a)):
            groups[-1].append(a)
        else:
            groups.append([a])
    order = sorted(range(len(groups)), key=lambda i: groups[i][0])
    new_shape = tuple(math.prod(shape[a] for a in groups[i]) for i in order)
    rank_of = {g: r for r, g in enumerate(order)}
    return new_shape or (1,), tuple(rank_of[i] for i in range(len(groups))) or (0,)


@rule("tensor.transpose")
def _transpose_rule(node: Node, isa: VectorISA) -> NodeKernel:
    x = node.inputs[0]
    _f32(x)
    shape = _shape(x)
    perm = _attrs(node)["perm"]
    perm = tuple(reversed(range(len(shape)))) if perm is None else tuple(int(p) % len(shape) for p in perm)
    merged, mperm = _merge_axes(shape, perm)
    return NodeKernel(node.name, "transpose", TransposeSchedule(merged, mperm))


@rule("tensor.split")
def _split_rule(node: Node, isa: VectorISA) -> NodeKernel:
    x = node.inputs[0]
    _f32(x)
    if x.const is not None:
        raise Unsupported("constant input")
    outs = [v for v in node.outputs if v is not None]
    for v in outs:
        _f32(v)
        _shape(v)
    rank = len(_shape(x))
    axis = int(_attrs(node)["axis"]) % rank
    return NodeKernel(node.name, "split", ConcatSchedule(axis, isa.lanes))


@attrs.frozen
class AttentionSchedule:
    """Scaled dot-product attention; work items are blocks of query rows of one head, which
    transpose that head's K on the stack (scores become vector FMAs), then per row: the mask,
    softmax, and the rows of V accumulated into the output row.

    ``strides``: for q, k, v and y, the float strides of (batch, head, row): 4-D [B, H, S, D]
    values are contiguous per head, 3-D [B, S, H·D] ones interleave the heads. Grouped-query
    heads: query head h reads KV head h // (heads / kv_heads). ``mask``: ``none``, ``float``
    (added to the scores) or ``bool`` (false: -inf), read at (batch, head, row) ``mask_strides``
    (0: broadcast) for its first ``mask_len`` keys, later keys masked. A query row with no
    attendable key gives zeros."""

    batch_heads: int
    q_len: int
    kv_len: int
    depth: int
    scale: float
    causal: bool
    lanes: int
    heads: int = 1
    kv_heads: int = 1
    v_depth: int = 0  # 0: the key depth
    strides: tuple[tuple[int, int, int], ...] = ()  # q, k, v, y; () = 4-D contiguous
    mask: str = "none"
    mask_strides: tuple[int, int, int] = (0, 0, 0)
    mask_len: int = 0


MAX_ATTENTION_STACK = 2**18  # bytes of kᵀ and scores a thread keeps on its stack


def _attention_dims(node: Node, a: dict) -> tuple[int, int, int, int, int, int, int, tuple]:
    """(batch, heads, kv_heads, q_len, kv_len, depth, v_depth, strides) of q/k/v and y."""
    qs, ks, vs = (_shape(x) for x in node.inputs[:3])
    if not len(qs) == len(ks) == len(vs) or len(qs) not in (3, 4):
        raise Unsupported("q, k, v must all be 3-D [batch, seq, heads·depth] or 4-D [batch, heads, seq, depth]")
    if len(qs) == 4:
        (b, h, sq, d), (_, kh, skv, _), (_, _, _, dv) = qs, ks, vs
        ok = qs[0] == ks[0] == vs[0] and ks[1] == vs[1] and ks[2] == vs[2] and qs[3] == ks[3]
        strides = ((h * sq * d, sq * d, d), (kh * skv * d, skv * d, d), (kh * skv * dv, skv * dv, dv),
                   (h * sq * dv, sq * dv, dv))
    else:
        h, kh = a["q_num_heads"], a["kv_num_heads"]
        if not h or not kh or qs[2] % h or ks[2] % kh or vs[2] % kh:
            raise Unsupported("3-D inputs need q_num_heads / kv_num_heads dividing the hidden sizes")
        b, sq, skv = qs[0], qs[1], ks[1]
        d, dv = qs[2] // h, vs[2] // kh
        ok = qs[0] == ks[0] == vs[0] and ks[1] == vs[1] and ks[2] // kh == d
        strides = ((sq * h * d, d, h * d), (skv * kh * d, d, kh * d), (skv * kh * dv, dv, kh * dv),
                   (sq * h * dv, dv, h * dv))
    if not ok or h % kh:
        raise Unsupported(f"q {qs}, k {ks}, v {vs} are not attention shapes kryo handles")
    return b, h, kh, sq, skv, d, dv, strides


@rule("nn.attention")
def _attention_rule(node: Node, isa: VectorISA) -> NodeKernel:
    q, k, v = node.inputs[:3]
    for x in (q, k, v):
        _f32(x)
    if any(x is not None for x in node.inputs[4:]):
        raise Unsupported("KV caches and sequence lengths")
    if any(not _unused(x, node.graph) for x in node.outputs[1:]):
        raise Unsupported("present_key / present_value / qk outputs are used")
    a = _attrs(node)
    if a["left_window_size"] >= 0 or a["right_window_size"] >= 0 or (a["softcap"] or 0) > 0:
        raise Unsupported("sliding windows or soft-capping")
    if a["softmax_precision"] not in (None, DType.FLOAT32):
        raise Unsupported("softmax precision other than float32")
    b, h, kh, sq, skv, d, dv, strides = _attention_dims(node, a)
    mask, mask_strides, mask_len = "none", (0, 0, 0), 0
    m = node.inputs[3] if len(node.inputs) > 3 else None
    if m is not None:
        if not isinstance(m.type, TensorType) or m.type.dtype not in (DType.FLOAT32, DType.BOOL):
            raise Unsupported(f"%{m.name} is {m.type}: masks must be fp32 or bool")
        ms = _shape(m)
        if len(ms) > 4:
            raise Unsupported(f"mask of rank {len(ms)}")
        mb, mh, mq, mk = (1,) * (4 - len(ms)) + ms
        if mb not in (1, b) or mh not in (1, h) or mq not in (1, sq) or mk > skv:
            raise Unsupported(f"mask of shape {ms} does not broadcast to [{b}, {h}, {sq}, {skv}]")
        # a constant mask is packed as floats (bool: 0 / -inf)
        mask = "bool" if m.type.dtype is DType.BOOL and m.const is None else "float"
        mask_strides = (mh * mq * mk if mb > 1 else 0, mq * mk if mh > 1 else 0, mk if mq > 1 else 0)
        mask_len = mk
    kvp = -(-skv // isa.lanes) * isa.lanes
    if 4 * kvp * (d + 1) > MAX_ATTENTION_STACK:
        raise Unsupported(f"keys × depth over {MAX_ATTENTION_STACK} bytes (kᵀ is kept on the stack)")
    scale = a["scale"] if a["scale"] is not None else 1 / math.sqrt(d)
    return NodeKernel(node.name, "attention", AttentionSchedule(
        b * h, sq, skv, d, float(scale), bool(a["is_causal"]), isa.lanes, h, kh, dv, strides, mask,
        mask_strides, mask_len))


def _unused(v: Value | None, graph: Graph) -> bool:
    return v is None or (not v.users and all(v is not o for o in graph.outputs))


@rule("nn.softmax")
def _softmax_rule(node: Node, isa: VectorISA) -> NodeKernel:
    x = node.inputs[0]
    _f32(x)
    shape = _shape(x)
    axis = int(_attrs(node)["axis"]) % max(len(shape), 1)
    # over an inner axis the rows are strided: the kernel vectorizes over the trailing dims
    inner = math.prod(shape[axis + 1:])
    return NodeKernel(node.name, "rows", RowSchedule("softmax", math.prod(shape[:axis]), shape[axis], isa.lanes,
                                                     inner=inner))


@attrs.frozen
class LrnSchedule:
    """Local response normalization across channels, y = x / (bias + alpha/size·Σ x²)^beta over
    the ``size`` channels around each one: per pixel over a zero-padded row of squares (NHWC) or
    per channel plane, vectorized over pixels (plain)."""

    size: int
    alpha: float
    beta: float
    bias: float
    lanes: int


@rule("nn.lrn")
def _lrn_rule(node: Node, isa: VectorISA) -> NodeKernel:
    x = node.inputs[0]
    _f32(x)
    _f32(node.output)
    if len(_shape(x)) < 2:
        raise Unsupported("LRN needs [N, C, ...] inputs")
    a = _attrs(node)
    if int(a["size"]) < 1:
        raise Unsupported(f"size={a['size']}")
    return NodeKernel(node.name, "lrn", LrnSchedule(int(a["size"]), float(a["alpha"]), float(a["beta"]),
                                                    float(a["bias"]), isa.lanes))


@rule("nn.layer_normalization")
def _layer_norm_rule(node: Node, isa: VectorISA) -> NodeKernel:
    x, scale = node.inputs[0], node.inputs[1]
    b = node.inputs[2] if len(node.inputs) > 2 else None
    _f32(x)
    a = _attrs(node)
    if a["stash_type"] != 1:
        raise Unsupported("stash_type other than float32")
    stats = [v for v in node.outputs[1:] if not _unused(v, node.graph)]
    for v in stats:  # mean / inv_std_dev, one float per row
        _f32(v)
    shape = _shape(x)
    axis = int(a["axis"]) % len(shape)
    length = math.prod(shape[axis:])
    for v in (scale, b):
        if v is None:
            continue
        _f32(v)
        # constants are broadcast when packed; a computed one is read as is
        if v.const is None and math.prod(_shape(v)) != length:
            raise Unsupported(f"computed %{v.name} does not cover all {length} normalized elements")
    return NodeKernel(node.name, "rows", RowSchedule("layer_norm", math.prod(shape[:axis]), length, isa.lanes,
                                                     float(a["epsilon"]), b is not None))


def choose_kernel(node: Node, isa: VectorISA) -> NodeKernel | str:
    """The NodeKernel for ``node``, or the reason it has none."""
    fn = KERNEL_RULES.get(node.op)
    if fn is None:
        return f"no kryo kernel for {node.op}"
    if node.subgraphs():
        return "has subgraphs"
    try:
        k = fn(node, isa)
    except Unsupported as exc:
        return str(exc)
    in_place = _in_place_inputs(node, k)
    for i in in_place or ():
        v = node.inputs[i] if i < len(node.inputs) else None
        # kernels read these operands in place, from the arena or the caller's arrays; a constant
        # has neither address (constants a kernel needs are packed into the weights blob instead)
        if v is not None and v.const is not None:
            return f"constant %{v.name} would be read in place (kernels read only packed constants)"
    return k


#: Input indices each kernel kind reads in place as data (not packed, not compile-time attributes
#: such as clip bounds, split sizes or reshape shapes); None: all inputs.
IN_PLACE_INPUTS: dict[str, tuple[int, ...] | None] = {
    "conv": (0, 3), "gemm": (0,), "matmul": (0, 1), "attention": (0, 1, 2), "lrn": (0,), "pool": (0,),
    "split": (0,), "transpose": (0,), "concat": None, "rows": (0,),
}


def _in_place_inputs(node: Node, k: NodeKernel) -> tuple[int, ...] | None:
    """The inputs ``k`` reads in place (an empty tuple for kernel kinds this check does not know,
    e.g. the integer ones)."""
    if k.kernel == "eltwise":
        s = k.schedule
        if s.op in BINARY_OPS:  # the broadcast operand of scalar/channel/row modes is packed if constant
            return (0, 1) if s.mode == "same" else ((1,) if s.swap else (0,))
        return (0,)
    if k.kernel not in IN_PLACE_INPUTS:
        return ()
    found = IN_PLACE_INPUTS[k.kernel]
    return tuple(range(len(node.inputs))) if found is None else found


# -- layouts -------------------------------------------------------------------------------

def _layout_slots(node: Node, k: NodeKernel) -> tuple[list[int], bool]:
    """Input indices of ``node`` that may be NHWC, and whether its output may be."""
    if k.kernel in kernels_int8.LAYOUT_SLOTS:
        return kernels_int8.LAYOUT_SLOTS[k.kernel](node, k)
    if k.kernel in ("conv",):
        return [0, 3], True
    if k.kernel == "pool":
        return [0], not k.schedule.kind.startswith("global")
    if k.kernel == "lrn":  # input and output in one layout (kept together like eltwise)
        return [0], True
    if k.kernel == "concat":
        nhwc_ok = k.schedule.axis == 1 and len(resolve_shape(node.output, {})[0]) == 4
        return (list(range(len(node.inputs))) if nhwc_ok else []), nhwc_ok
    if k.kernel == "eltwise" and node.op not in COPY_OPS:
        out = resolve_shape(node.output, {})[0]
        return [i for i, v in enumerate(node.inputs) if v is not None and v.const is None
                and resolve_shape(v, {})[0] == out], True
    return [], False


def _assign_layouts(graph: Graph, kernels: dict[str, NodeKernel]) -> dict[str, str]:
    """NHWC where the producer writes it and every reader takes it; elementwise nodes keep
    their activation operands and output in one layout (fixpoint)."""
    layouts: dict[str, str] = {}
    for node in graph.nodes:
        k = kernels.get(node.name)
        for v in node.outputs:
            if v is None:
                continue
            shape = resolve_shape(v, {})[0]
            ok = k is not None and _layout_slots(node, k)[1] and shape is not None and len(shape) == 4
            layouts[v.name] = NHWC if ok else PLAIN
    # graph outputs, and values If/Loop/Scan bodies capture (their interpreter reads NCHW), stay plain
    outputs = {v.name for v in graph.outputs}
    outputs |= {v.name for node in graph.nodes if node.subgraphs() for v in captured_values(node, graph)}
    changed = True
    while changed:
        changed = False
        for node in graph.nodes:
            k = kernels.get(node.name)
            slots = _layout_slots(node, k)[0] if k is not None else []
            for i, v in enumerate(node.inputs):
                if v is None or layouts.get(v.name) != NHWC:
                    continue
                if i not in slots:
                    layouts[v.name] = PLAIN
                    changed = True
            if k is not None and k.kernel in ("eltwise", "concat", "lrn", "qeltwise"):
                group = [v for i, v in enumerate(node.inputs) if i in slots] + [node.output]
                if any(layouts.get(v.name, PLAIN) == PLAIN for v in group) and any(
                        layouts.get(v.name) == NHWC for v in group):
                    for v in group:
                        if layouts.get(v.name) == NHWC:
                            layouts[v.name] = PLAIN
                    changed = True
        for name in outputs:
            if layouts.get(name) == NHWC:
                layouts[name] = PLAIN
                changed = True
    return layouts


# -- scratch and weights -------------------------------------------------------------------

@attrs.frozen
class Conversions:
    """Which layout conversions an NHWC kernel (conv, pooling) does through scratch, per image.

    A plain value whose spatial size is 1×1 has the same bytes as NHWC: no conversion.
    ``x_offset``, ``y_offset``, ``res_offset``: where each buffer sits in scratch.
    """

    x_plain: bool = False
    y_plain: bool = False
    res_plain: bool = False
    x_bytes: int = 0
    y_bytes: int = 0
    res_bytes: int = 0

    @property
    def x_offset(self) -> int:
        return 0

    @property
    def y_offset(self) -> int:
        return self.x_bytes

    @property
    def res_offset(self) -> int:
        return self.x_bytes + self.y_bytes

    @property
    def total(self) -> int:
        return self.x_bytes + self.y_bytes + self.res_bytes


def conversions(node: Node, k: NodeKernel, layouts: dict[str, str]) -> Conversions:
    """The conversions and scratch buffers of ``node``'s kernel (see Conversions)."""
    if k.kernel not in ("conv", "pool"):
        return Conversions()
    g = k.geometry

    def plain(v: Value, spatial: int) -> bool:
        return layouts.get(v.name, PLAIN) == PLAIN and spatial > 1

    x_plain = plain(node.inputs[0], g.h * g.w)
    y_plain = plain(node.outputs[0], g.oh * g.ow)
    res_plain = k.epilogue.residual and plain(node.inputs[3], g.oh * g.ow)
    x_bytes = 0
    if k.kernel == "conv" and (k.schedule.pad_copy or x_plain):
        x_bytes = _align(g.hp * g.wp * g.c * 4)
    elif k.kernel == "pool" and x_plain:
        x_bytes = _align(g.h * g.w * g.c * 4)
    out = _align(g.oh * g.ow * g.m * 4)
    return Conversions(x_plain, y_plain, res_plain, x_bytes, out if y_plain else 0, out if res_plain else 0)


def _align(n: int, a: int = 64) -> int:
    return -(-n // a) * a


def _weight_sizes(node: Node, k: NodeKernel) -> dict[str, int]:
    """Float counts of the packed constants a kernel reads (see qir.targets.kryo.pack)."""
    if k.kernel in kernels_int8.WEIGHT_SIZES:
        return kernels_int8.WEIGHT_SIZES[k.kernel](node, k)
    if k.kernel in ("conv", "gemm"):
        g, s = k.geometry, k.schedule
        cg, mg = g.c // g.groups, g.m // g.groups
        if s.kind == "depthwise":
            cp = -(-g.c // s.gemm.lanes) * s.gemm.lanes
            sizes = {"w": g.kh * g.kw * cp}
            if k.epilogue.bias:
                sizes["b"] = cp
            return sizes
        panels = -(-mg // s.gemm.nr)
        sizes = {"w": g.groups * panels * g.kh * g.kw * cg * s.gemm.nr}
        if k.epilogue.bias:
            sizes["b"] = g.groups * panels * s.gemm.nr
        return sizes
    if k.kernel == "attention" and k.schedule.mask != "none" and node.inputs[3].const is not None:
        return {"mask": int(node.inputs[3].const.size)}
    if k.kernel == "matmul" and k.schedule.c_strides is not None and node.inputs[2].const is not None:
        return {"c": int(node.inputs[2].const.size)}
    if k.kernel == "rows" and k.schedule.kind == "layer_norm":
        sizes = {"scale": k.schedule.length} if node.inputs[1].const is not None else {}
        if k.schedule.bias and node.inputs[2].const is not None:
            sizes["bias"] = k.schedule.length
        return sizes
    if k.kernel == "eltwise" and k.schedule.mode in ("scalar", "channel", "row"):
        small = node.inputs[0 if k.schedule.swap else 1]
        if small.const is not None:
            return {"c": int(small.const.size)}
    return {}


# -- the entry point -----------------------------------------------------------------------

def lower_graph(graph: Graph, isa: VectorISA, *,
                allow: Callable[[Node], bool] | None = None) -> LoweredGraph:
    """Choose kernels, layouts, scratch, packed-weight slots and the memory plan for ``graph``
    (whose shapes must be static where kernels are wanted; others fall back).

    ``allow(node)`` may veto kernels (tests force fallbacks with it).
    """
    plan = plan_memory(graph)
    kernels: dict[str, NodeKernel] = {}
    fallback: dict[str, str] = {}
    for node in graph.nodes:
        k = choose_kernel(node, isa) if allow is None or allow(node) else "disabled by the caller"
        if isinstance(k, NodeKernel):
            touched = [v for v in list(node.inputs) + list(node.outputs) if v is not None]
            missing = [v.name for v in touched if v.name in plan.unplannable]
            if missing:
                k = f"%{missing[0]} has no static size"
        if isinstance(k, NodeKernel):
            kernels[node.name] = k
        else:
            fallback[node.name] = k
    layouts = _assign_layouts(graph, kernels)
    scratch = 0
    weights: dict[tuple[str, str], WeightSlot] = {}
    wsize = 0
    for node in graph.nodes:
        k = kernels.get(node.name)
        if k is None:
            continue
        conv = conversions(node, k, layouts)
        if conv.total:
            kernels[node.name] = k = attrs.evolve(k, scratch=conv.total)
        scratch = max(scratch, conv.total, k.scratch)
        for key, size in _weight_sizes(node, k).items():
            weights[(node.name, key)] = WeightSlot(wsize, size)
            wsize += _align(size, 16)
    return LoweredGraph(graph, isa, kernels, fallback, layouts, plan, scratch, weights, wsize)


from qir.lowering import kernels_int8  # noqa: E402  (registers the qint rules; imports this module)
