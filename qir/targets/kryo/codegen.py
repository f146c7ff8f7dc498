"""llvmlite IR for the kryo kernels: explicit ``<lanes x float>`` SIMD, shapes as constants.

The emitters follow the schedules of qir.lowering.kernels:

- ``conv_core``: the register-blocked implicit GEMM of a ``direct_nhwc`` conv (and of GEMMs and
  1×1 convs over flat rows). ``mr`` output pixels × ``nv`` vectors of output channels are
  accumulated in registers; per K step it loads ``nv`` packed weight vectors (aligned) and
  broadcasts ``mr`` activations read in place at constant offsets; the channel loop is unrolled
  ``unroll`` times by hand (LLVM does not do it); the epilogue adds bias and residual and applies
  the activation before storing (partial vectors store lane by lane).
- ``depthwise_core``: ``mr`` pixels × one channel vector, taps unrolled.
- ``pool_core``: max/average windows clipped at run time, vectorized over channels.
- ``eltwise``: flat maps with scalar / per-channel broadcast, and the layout conversions.

The GEMM accumulators are SSA values carried through the loops as phis (``loop_carry``), which
keeps the IR small (compile time) and the tile in registers.
"""

from __future__ import annotations

import math
from typing import Callable

from llvmlite import ir

F32 = ir.FloatType()
I64 = ir.IntType(64)
I32 = ir.IntType(32)
I8P = ir.IntType(8).as_pointer()
FP = F32.as_pointer()


def vt(lanes: int):
    return F32 if lanes == 1 else ir.VectorType(F32, lanes)


def c64(v: int) -> ir.Constant:
    return ir.Constant(I64, int(v))


def cf(v: float, lanes: int = 1) -> ir.Constant:
    if lanes == 1:
        return ir.Constant(F32, float(v))
    return ir.Constant(vt(lanes), [ir.Constant(F32, float(v))] * lanes)


def _intrinsic(module: ir.Module, base: str, lanes: int, nargs: int) -> ir.Function:
    name = f"{base}.{'f32' if lanes == 1 else f'v{lanes}f32'}"
    fn = module.globals.get(name)
    if fn is None:
        t = vt(lanes)
        fn = ir.Function(module, ir.FunctionType(t, [t] * nargs), name=name)
    return fn


class Emitter:
    """An IRBuilder with the loop, pointer and vector helpers the kernels share."""

    def __init__(self, module: ir.Module, fn: ir.Function, fma: bool = True, nt: int = 1, tid=None,
                 ctrl=None):
        self.module = module
        self.fn = fn
        self.fma_ok = fma
        self.nt = nt
        self.tid = tid if tid is not None else c64(0)
        self.ctrl = ctrl  # i8*: the thread control block (see ``parallel``)
        self.entry = fn.append_basic_block("entry")
        body = fn.append_basic_block("body")
        self.b = ir.IRBuilder(body)
        self._n = 0

    def finish(self) -> None:
        self.b.ret_void()
        ir.IRBuilder(self.entry).branch(self.fn.blocks[1])

    # -- scalars, pointers, vectors --
    def alloca(self, t, init=None):
        ab = ir.IRBuilder(self.entry)
        slot = ab.alloca(t)
        if init is not None:
            self.b.store(init, slot)
        return slot

    def ptr(self, base, offset):
        """``base + offset`` floats (offset: int or i64 value)."""
        if isinstance(offset, int):
            if offset == 0:
                return base
            offset = c64(offset)
        return self.b.gep(base, [offset], inbounds=True)

    def add(self, a, b):
        if isinstance(b, int):
            if b == 0:
                return a
            b = c64(b)
        return self.b.add(a, b)

    def mul(self, a, k: int):
        return a if k == 1 else self.b.mul(a, c64(k))

    def load(self, p, lanes: int, align: int = 4):
        if lanes == 1:
            return self.b.load(p, align=4)
        return self.b.load(self.b.bitcast(p, vt(lanes).as_pointer()), align=align)

    def store(self, v, p, lanes: int, align: int = 4):
        if lanes == 1:
            self.b.store(v, p, align=4)
        else:
            self.b.store(v, self.b.bitcast(p, vt(lanes).as_pointer()), align=align)

    def splat(self, s, lanes: int):
        """``s`` (float or int) in every lane of a vector."""
        if lanes == 1:
            return s
        t = ir.VectorType(s.type, lanes)
        v = self.b.insert_element(ir.Constant(t, ir.Undefined), s, ir.Constant(I32, 0))
        return self.b.shuffle_vector(v, ir.Constant(t, ir.Undefined),
                                     ir.Constant(ir.VectorType(I32, lanes), [0] * lanes))

    def fma(self, a, x, acc, lanes: int):
        if self.fma_ok:
            return self.b.call(_intrinsic(self.module, "llvm.fma", lanes, 3), [a, x, acc])
        return self.b.fadd(self.b.fmul(a, x), acc)

    def call1(self, base: str, x, lanes: int):
        return self.b.call(_intrinsic(self.module, base, lanes, 1), [x])

    def fmax(self, a, b):
        return self.b.select(self.b.fcmp_ordered(">", a, b), a, b)

    def fmin(self, a, b):
        return self.b.select(self.b.fcmp_ordered("<", a, b), a, b)

    # -- loops --
    def loop(self, count: int, body: Callable, start: int = 0) -> None:
        """``for i in range(start, start + count)`` with a constant trip count."""
        if count <= 0:
            return
        if count == 1:
            body(c64(start))
            return
        self._n += 1
        pre = self.b.block
        hdr = self.fn.append_basic_block(f"L{self._n}")
        out = self.fn.append_basic_block(f"X{self._n}")
        self.b.branch(hdr)
        self.b.position_at_end(hdr)
        i = self.b.phi(I64)
        i.add_incoming(c64(start), pre)
        body(i)
        nxt = self.b.add(i, c64(1))
        i.add_incoming(nxt, self.b.block)
        self.b.cbranch(self.b.icmp_signed("<", nxt, c64(start + count)), hdr, out)
        self.b.position_at_end(out)

    def loop_carry(self, count: int, inits: list, body: Callable, start: int = 0) -> list:
        """``vals = body(i, vals)`` for ``i`` in ``range(start, start + count)`` with the values
        carried in registers (phis); returns the final values."""
        if count <= 0:
            return list(inits)
        if count == 1:
            return list(body(c64(start), list(inits)))
        self._n += 1
        pre = self.b.block
        hdr = self.fn.append_basic_block(f"C{self._n}")
        out = self.fn.append_basic_block(f"CX{self._n}")
        self.b.branch(hdr)
        self.b.position_at_end(hdr)
        i = self.b.phi(I64)
        i.add_incoming(c64(start), pre)
        phis = []
        for v in inits:
            p = self.b.phi(v.type)
            p.add_incoming(v, pre)
            phis.append(p)
        new = list(body(i, list(phis)))
        nxt = self.b.add(i, c64(1))
        latch = self.b.block
        i.add_incoming(nxt, latch)
        for p, v in zip(phis, new):
            p.add_incoming(v, latch)
        self.b.cbranch(self.b.icmp_signed("<", nxt, c64(start + count)), hdr, out)
        self.b.position_at_end(out)
        return new

    def loop_rt(self, lo, hi, body: Callable) -> None:
        """``for i in range(lo, hi)`` with run-time bounds (may run zero times)."""
        self._n += 1
        pre = self.b.block
        hdr = self.fn.append_basic_block(f"R{self._n}")
        blk = self.fn.append_basic_block(f"RB{self._n}")
        out = self.fn.append_basic_block(f"RX{self._n}")
        self.b.branch(hdr)
        self.b.position_at_end(hdr)
        i = self.b.phi(I64)
        i.add_incoming(lo, pre)
        self.b.cbranch(self.b.icmp_signed("<", i, hi), blk, out)
        self.b.position_at_end(blk)
        body(i)
        i.add_incoming(self.b.add(i, c64(1)), self.b.block)
        self.b.branch(hdr)
        self.b.position_at_end(out)

    # -- threads --
    # Control block (i64 slots, zeroed by the runtime before each call): [0] items claimed,
    # [8] items done (own cache line), [16 + 8·tid] thread tid's count of items of the regions it
    # has passed. Every thread runs the same sequence of parallel regions; a region's items are
    # the counter values base .. base + total. Items are claimed with compare-and-swap, so a
    # thread never takes an item of the next region, and a thread the OS deschedules holds no one
    # up: the others take all the items, and it skips the region when it arrives. A region ends
    # when ``done`` reaches base + total (that is the only wait, like a join of an OpenMP loop).

    def _slot(self, index):
        return self.b.gep(self.b.bitcast(self.ctrl, I64.as_pointer()), [index])

    def parallel(self, total: int, body: Callable) -> None:
        """``body(i)`` for every ``i < total`` across the threads, then wait until all are done.
        With one thread: a plain loop."""
        if self.nt == 1:
            self.loop(total, body)
            return
        b = self.b
        claim, done = self._slot(c64(0)), self._slot(c64(8))
        base_p = self._slot(b.add(c64(16), b.mul(self.tid, c64(8))))
        base = b.load(base_p, align=8)
        end = b.add(base, c64(total))
        self._n += 1
        hdr = self.fn.append_basic_block(f"W{self._n}")
        try_ = self.fn.append_basic_block(f"WT{self._n}")
        blk = self.fn.append_basic_block(f"WB{self._n}")
        wait = self.fn.append_basic_block(f"WW{self._n}")
        spin = self.fn.append_basic_block(f"WS{self._n}")
        out = self.fn.append_basic_block(f"WX{self._n}")
        b.branch(hdr)
        b.position_at_end(hdr)
        cur = b.load_atomic(claim, "monotonic", 8)
        b.cbranch(b.icmp_unsigned("<", cur, end), try_, wait)
        b.position_at_end(try_)
        pair = b.cmpxchg(claim, cur, b.add(cur, c64(1)), "monotonic", "monotonic")
        b.cbranch(b.extract_value(pair, 1), blk, hdr)
        b.position_at_end(blk)
        body(b.sub(cur, base))
        b.atomic_rmw("add", done, c64(1), "release")
        b.branch(hdr)
        b.position_at_end(wait)
        b.branch(spin)
        b.position_at_end(spin)
        finished = b.icmp_unsigned(">=", b.load_atomic(done, "acquire", 8), end)
        yld = self.module.globals.get("sched_yield") or ir.Function(
            self.module, ir.FunctionType(I32, []), name="sched_yield")
        again = self.fn.append_basic_block(f"WY{self._n}")
        b.cbranch(finished, out, again)
        b.position_at_end(again)
        b.call(yld, [])
        b.branch(spin)
        b.position_at_end(out)
        b.store(end, base_p, align=8)

    def single(self, body: Callable) -> None:
        """``body()`` once, by whichever thread claims it; everyone waits for it."""
        self.parallel(1, lambda _i: body())

    def imax(self, a, b):
        return self.b.select(self.b.icmp_signed(">", a, b), a, b)

    def imin(self, a, b):
        return self.b.select(self.b.icmp_signed("<", a, b), a, b)


# -- exp -----------------------------------------------------------------------------------

def vexp(e: Emitter, x, lanes: int):
    """exp(x) in SIMD (llvm.exp on vectors becomes one libm call per lane): x = n·ln2 + r with
    |r| ≤ ln2/2, exp(r) by Cephes' degree-5 polynomial, 2ⁿ from the exponent bits. Inputs are
    clamped to [-87.3, 88.37] (results: ~1e-38 .. 2.4e38; -inf gives ~0, as softmax needs);
    relative error ~2 ulp. NaN propagates."""
    b = e.b
    it = ir.IntType(32) if lanes == 1 else ir.VectorType(ir.IntType(32), lanes)
    xc = e.fmin(e.fmax(x, cf(-87.33654, lanes)), cf(88.37626, lanes))
    nan = b.fcmp_unordered("uno", x, x)
    n = e.call1("llvm.rint", b.fmul(xc, cf(1.4426950408889634, lanes)), lanes)
    r = b.fsub(xc, b.fmul(n, cf(0.693359375, lanes)))
    r = b.fsub(r, b.fmul(n, cf(-2.12194440e-4, lanes)))
    p = cf(1.9875691500e-4, lanes)
    for coef in (1.3981999507e-3, 8.3334519073e-3, 4.1665795894e-2, 1.6666665459e-1, 5.0000001201e-1):
        p = e.fma(p, r, cf(coef, lanes), lanes)
    p = e.fma(p, b.fmul(r, r), b.fadd(r, cf(1.0, lanes)), lanes)
    # 2^n: n + 127 in the exponent field; n ≥ -126 after the clamp, except exp(-87.3) ≈ 2^-126
    ni = b.fptosi(n, it)
    two_n = b.bitcast(b.shl(b.add(ni, ir.Constant(it, 127) if lanes == 1 else
                                  ir.Constant(it, [ir.Constant(ir.IntType(32), 127)] * lanes)),
                            ir.Constant(it, 23) if lanes == 1 else
                            ir.Constant(it, [ir.Constant(ir.IntType(32), 23)] * lanes)), vt(lanes))
    return b.select(nan, x, b.fmul(p, two_n))


# -- activations ---------------------------------------------------------------------------

def activation(e: Emitter, x, name: str, params, lanes: int):
    """``x`` through an epilogue activation (qir.ir.ops.fused.ACTIVATIONS semantics)."""
    b = e.b
    if name == "none":
        return x
    if name == "relu":
        return e.fmax(x, cf(0.0, lanes))
    if name == "clip":
        lo, hi = params
        if lo != float("-inf"):
            x = e.fmax(x, cf(lo, lanes))
        if hi != float("inf"):
            x = e.fmin(x, cf(hi, lanes))
        return x
    if name == "leaky_relu":
        neg = b.fmul(x, cf(params[0], lanes))
        return b.select(b.fcmp_ordered(">=", x, cf(0.0, lanes)), x, neg)
    if name == "sigmoid":
        ex = vexp(e, b.fsub(cf(0.0, lanes), x), lanes)
        return b.fdiv(cf(1.0, lanes), b.fadd(cf(1.0, lanes), ex))
    if name == "tanh":
        # 1 - 2/(exp(2x)+1): exact limits at ±inf; absolute error ~1 ulp of 1 near 0.
        ex = vexp(e, b.fmul(x, cf(2.0, lanes)), lanes)
        return b.fsub(cf(1.0, lanes), b.fdiv(cf(2.0, lanes), b.fadd(ex, cf(1.0, lanes))))
    if name == "hard_sigmoid":
        alpha, beta = params
        y = b.fadd(b.fmul(x, cf(alpha, lanes)), cf(beta, lanes))
        return e.fmin(e.fmax(y, cf(0.0, lanes)), cf(1.0, lanes))
    if name == "hard_swish":
        y = b.fadd(b.fdiv(x, cf(6.0, lanes)), cf(0.5, lanes))
        return b.fmul(x, e.fmin(e.fmax(y, cf(0.0, lanes)), cf(1.0, lanes)))
    raise ValueError(f"activation {name!r} has no generator")


UNARY: dict[str, Callable] = {
    "nn.relu": lambda e, x, p, l: activation(e, x, "relu", p, l),
    "nn.sigmoid": lambda e, x, p, l: activation(e, x, "sigmoid", p, l),
    "nn.tanh": lambda e, x, p, l: activation(e, x, "tanh", p, l),
    "nn.hard_swish": lambda e, x, p, l: activation(e, x, "hard_swish", p, l),
    "nn.hard_sigmoid": lambda e, x, p, l: activation(e, x, "hard_sigmoid", p, l),
    "nn.leaky_relu": lambda e, x, p, l: activation(e, x, "leaky_relu", p, l),
    "clip": lambda e, x, p, l: activation(e, x, "clip", p, l),
    "elementwise.neg": lambda e, x, p, l: e.b.fsub(cf(0.0, l), x),
    "elementwise.abs": lambda e, x, p, l: e.call1("llvm.fabs", x, l),
    "elementwise.sqrt": lambda e, x, p, l: e.call1("llvm.sqrt", x, l),
    "elementwise.exp": lambda e, x, p, l: e.call1("llvm.exp", x, l),  # exact libm: exp is the op itself
    "tensor.identity": lambda e, x, p, l: x,
}
def erf(e: Emitter, x, lanes: int):
    """erf(x) by Abramowitz & Stegun 7.1.26 (absolute error < 1.5e-7), vectorized."""
    b = e.b
    ax = e.call1("llvm.fabs", x, lanes)
    t = b.fdiv(cf(1.0, lanes), b.fadd(cf(1.0, lanes), b.fmul(ax, cf(0.3275911, lanes))))
    poly = cf(1.061405429, lanes)
    for coef in (-1.453152027, 1.421413741, -0.284496736, 0.254829592):
        poly = b.fadd(b.fmul(poly, t), cf(coef, lanes))
    poly = b.fmul(poly, t)
    y = b.fsub(cf(1.0, lanes), b.fmul(poly, vexp(e, b.fsub(cf(0.0, lanes), b.fmul(ax, ax)), lanes)))
    return b.select(b.fcmp_ordered("<", x, cf(0.0, lanes)), b.fsub(cf(0.0, lanes), y), y)


def gelu(e: Emitter, x, lanes: int, approximate: str):
    b = e.b
    if approximate == "tanh":
        inner = b.fmul(cf(0.7978845608028654, lanes),
                       b.fadd(x, b.fmul(cf(0.044715, lanes), b.fmul(x, b.fmul(x, x)))))
        th = activation(e, inner, "tanh", (), lanes)
    else:
        th = erf(e, b.fmul(x, cf(0.7071067811865476, lanes)), lanes)
    return b.fmul(b.fmul(cf(0.5, lanes), x), b.fadd(cf(1.0, lanes), th))


UNARY.update({
    "gelu_none": lambda e, x, p, l: gelu(e, x, l, "none"),
    "gelu_tanh": lambda e, x, p, l: gelu(e, x, l, "tanh"),
    "elementwise.erf": lambda e, x, p, l: erf(e, x, l),
})
BINARY: dict[str, str] = {"elementwise.add": "fadd", "elementwise.sub": "fsub",
                          "elementwise.mul": "fmul", "elementwise.div": "fdiv",
                          "elementwise.pow": "llvm.pow"}  # llvm.pow: libm's powf per lane


# -- partial vectors -----------------------------------------------------------------------

def load_partial(e: Emitter, p, lanes: int, valid: int):
    if valid == lanes:
        return e.load(p, lanes)
    v = ir.Constant(vt(lanes), [ir.Constant(F32, 0.0)] * lanes)
    for i in range(valid):
        v = e.b.insert_element(v, e.b.load(e.ptr(p, i), align=4), ir.Constant(I32, i))
    return v


def store_partial(e: Emitter, v, p, lanes: int, valid: int):
    if valid == lanes:
        e.store(v, p, lanes)
        return
    for i in range(valid):
        e.b.store(e.b.extract_element(v, ir.Constant(I32, i)), e.ptr(p, i), align=4)


# -- the conv / GEMM core ------------------------------------------------------------------

def conv_core(module: ir.Module, name: str, *, c: int, wp: int, cg: int, mg: int, m: int, groups: int,
              oh: int, ow: int, kh: int, kw: int, sh: int, sw: int, dh: int, dw: int,
              mr: int, nv: int, lanes: int, unroll: int, act: str, params, bias: bool,
              residual: bool, fma: bool = True, nt: int = 1) -> ir.Function:
    """``core(x, w, bias, res, y, tid, ctrl)`` for one image; x NHWC (already padded: row stride ``wp``),
    y NHWC with ``m`` channels per pixel; weights packed [groups][panels][kh·kw·cg][nr]. Thread
    ``tid`` of ``nt`` computes its share of the (group, panel, row) items."""
    fn = ir.Function(module, ir.FunctionType(ir.VoidType(), [FP] * 5 + [I64, I8P]), name=name)
    fn.linkage = "internal"
    x, w, bvec, res, y, tid, ctrl = fn.args
    e = Emitter(module, fn, fma, nt, tid, ctrl)
    nr = nv * lanes
    taps = kh * kw
    ktot = taps * cg
    panels_full, part = divmod(mg, nr)
    panels = panels_full + (1 if part else 0)

    def micro(xb, wpan, bpan, yoff, rows: int, nvv: int, last: int):
        # accumulators: rows × nvv vectors, carried through the tap and channel loops as phis
        zero = [cf(0.0, lanes)] * (rows * nvv)

        def step(xt, wt, ci, acc):
            wv = [e.load(e.ptr(wt, e.add(e.mul(ci, nr), v * lanes)), lanes, align=min(64, lanes * 4))
                  for v in range(nvv)]
            acc = list(acc)
            for r in range(rows):
                a = e.splat(e.b.load(e.ptr(xt, e.add(ci, r * sw * c)), align=4), lanes)
                for v in range(nvv):
                    acc[r * nvv + v] = e.fma(a, wv[v], acc[r * nvv + v], lanes)
            return acc

        def kloop(xt, wt, acc):
            nfull = cg // unroll

            def unrolled(i4, acc):
                for u in range(unroll):
                    acc = step(xt, wt, e.add(e.mul(i4, unroll), u), acc)
                return acc
            acc = e.loop_carry(nfull, acc, unrolled)
            for rem in range(cg % unroll):
                acc = step(xt, wt, c64(nfull * unroll + rem), acc)
            return acc

        if taps == 1:
            acc = kloop(xb, wpan, zero)
        else:
            def tap(t, acc):
                ky = e.b.udiv(t, c64(kw))
                kx = e.b.urem(t, c64(kw))
                off = e.b.add(e.mul(ky, dh * wp * c), e.mul(kx, dw * c))
                return kloop(e.ptr(xb, off), e.ptr(wpan, e.mul(t, cg * nr)), acc)
            acc = e.loop_carry(taps, zero, tap)
        for r in range(rows):
            for v in range(nvv):
                valid = last if v == nvv - 1 else lanes
                val = acc[r * nvv + v]
                if bias:
                    val = e.b.fadd(val, e.load(e.ptr(bpan, v * lanes), lanes, align=min(64, lanes * 4)))
                off = e.add(yoff, r * m + v * lanes)
                if residual:
                    val = e.b.fadd(val, load_partial(e, e.ptr(res, off), lanes, valid))
                val = activation(e, val, act, params, lanes)
                store_partial(e, val, e.ptr(y, off), lanes, valid)

    # Work items (one per thread share): (group, panel, row). A "row" is one output row, or for
    # flat pixel rows (GEMMs, 1×1 convs) a chunk of ``rl`` pixels, so that threads can split it.
    if oh == 1 and nt > 1:
        tiles = -(-ow // mr)
        rl = mr * -(-tiles // (4 * nt))
        rows, rx, ry = -(-ow // rl), rl * sw * c, rl * m
        last_len = ow - (rows - 1) * rl
    else:
        rl, rows, rx, ry, last_len = ow, oh, sh * wp * c, ow * m, ow
    b = e.b

    def row(gi, p, o, length: int, nvv: int, last: int):
        wpan = e.ptr(w, b.add(e.mul(gi, panels * ktot * nr), e.mul(p, ktot * nr)))
        bpan = e.ptr(bvec, b.add(e.mul(gi, panels * nr), e.mul(p, nr)))
        xrow = e.ptr(x, b.add(e.mul(gi, cg), e.mul(o, rx)))
        yrow = b.add(b.add(e.mul(gi, mg), e.mul(p, nr)), e.mul(o, ry))
        tiles_, edge = divmod(length, mr)
        e.loop(tiles_, lambda t: micro(e.ptr(xrow, e.mul(t, mr * sw * c)), wpan, bpan,
                                       b.add(yrow, e.mul(t, mr * m)), mr, nvv, last))
        if edge:
            micro(e.ptr(xrow, tiles_ * mr * sw * c), wpan, bpan, e.add(yrow, tiles_ * mr * m), edge, nvv, last)

    def branch(cond, then, other):
        e._n += 1
        bt = e.fn.append_basic_block(f"T{e._n}")
        bo = e.fn.append_basic_block(f"O{e._n}")
        bx = e.fn.append_basic_block(f"J{e._n}")
        b.cbranch(cond, bt, bo)
        b.position_at_end(bt)
        then()
        b.branch(bx)
        b.position_at_end(bo)
        other()
        b.branch(bx)
        b.position_at_end(bx)

    def by_length(gi, p, o, nvv, last):
        if last_len == rl:
            row(gi, p, o, rl, nvv, last)
        else:
            branch(b.icmp_unsigned("<", o, c64(rows - 1)), lambda: row(gi, p, o, rl, nvv, last),
                   lambda: row(gi, p, o, last_len, nvv, last))

    nv_part = -(-part // lanes) if part else 0

    def item(idx):
        gi = b.udiv(idx, c64(panels * rows))
        rem = b.urem(idx, c64(panels * rows))
        p, o = b.udiv(rem, c64(rows)), b.urem(rem, c64(rows))
        if not part:
            by_length(gi, p, o, nv, lanes)
        elif not panels_full:
            by_length(gi, p, o, nv_part, part - (nv_part - 1) * lanes)
        else:
            branch(b.icmp_unsigned("<", p, c64(panels_full)), lambda: by_length(gi, p, o, nv, lanes),
                   lambda: by_length(gi, p, o, nv_part, part - (nv_part - 1) * lanes))

    e.parallel(groups * panels * rows, item)
    e.finish()
    return fn


def _interior(pad: int, size: int, k: int, s: int, d: int, out: int) -> tuple[int, int]:
    """Output positions [lo, hi) whose whole window lies inside the input (no padding)."""
    lo = min(out, -(-pad // s))
    last = size - 1 - (k - 1) * d + pad
    hi = last // s + 1 if last >= 0 else 0
    return lo, max(lo, min(out, hi))


def depthwise_core(module: ir.Module, name: str, *, c: int, h: int, w: int, pads, oh: int, ow: int,
                   kh: int, kw: int, sh: int, sw: int, dh: int, dw: int, mr: int, lanes: int, act: str,
                   params, bias: bool, residual: bool, fma: bool = True, nt: int = 1) -> ir.Function:
    """``core(x, w, bias, res, y, tid, ctrl)`` of a depthwise conv (multiplier 1) on one NHWC image,
    read in place: output pixels whose window lies inside the image run tiles of ``mr`` pixels ×
    one channel vector with the taps unrolled; border pixels check each tap (and read zero
    outside). Weights packed [kh·kw][cp], bias [cp] (cp: c rounded up to whole vectors)."""
    fn = ir.Function(module, ir.FunctionType(ir.VoidType(), [FP] * 5 + [I64, I8P]), name=name)
    fn.linkage = "internal"
    x, w_, bvec, res, y, tid, ctrl = fn.args
    e = Emitter(module, fn, fma, nt, tid, ctrl)
    b = e.b
    cp = -(-c // lanes) * lanes
    pt, pl = pads[0], pads[1]
    oh_lo, oh_hi = _interior(pt, h, kh, sh, dh, oh)
    ow_lo, ow_hi = _interior(pl, w, kw, sw, dw, ow)

    def finish(val, o, q, ch, ln):
        if bias:
            val = b.fadd(val, e.load(e.ptr(bvec, ch), ln))
        off = b.add(e.mul(b.add(e.mul(o, ow), q), c), ch)
        if residual:
            val = b.fadd(val, e.load(e.ptr(res, off), ln))
        e.store(activation(e, val, act, params, ln), e.ptr(y, off), ln)

    def channels(body):
        nvec, tail = divmod(c, lanes)
        e.loop(nvec, lambda cv: body(e.mul(cv, lanes), lanes))
        if tail:
            e.loop(tail, lambda t: body(t, 1), start=nvec * lanes)

    def tile(o, ow0, rows: int):  # every tap inside the image
        def body(ch, ln: int):
            accs = [cf(0.0, ln)] * rows
            for ky in range(kh):
                for kx in range(kw):
                    wv = e.load(e.ptr(w_, e.add(ch, (ky * kw + kx) * cp)), ln)
                    iy = e.add(e.mul(o, sh), ky * dh - pt)
                    ix = e.add(e.mul(ow0, sw), kx * dw - pl)
                    base = b.add(e.mul(b.add(e.mul(iy, w), ix), c), ch)
                    for r in range(rows):
                        xv = e.load(e.ptr(x, e.add(base, r * sw * c)), ln)
                        accs[r] = e.fma(xv, wv, accs[r], ln)
            for r in range(rows):
                finish(accs[r], o, e.add(ow0, r), ch, ln)
        channels(body)

    def pixel(o, q):  # taps checked one by one
        def body(ch, ln: int):
            acc = cf(0.0, ln)
            for ky in range(kh):
                iy = e.add(e.mul(o, sh), ky * dh - pt)
                in_y = b.and_(b.icmp_signed(">=", iy, c64(0)), b.icmp_signed("<", iy, c64(h)))
                for kx in range(kw):
                    ix = e.add(e.mul(q, sw), kx * dw - pl)
                    ok = b.and_(in_y, b.and_(b.icmp_signed(">=", ix, c64(0)), b.icmp_signed("<", ix, c64(w))))
                    at = b.select(ok, b.add(e.mul(iy, w), ix), c64(0))  # a safe address when outside
                    xv = b.select(ok, e.load(e.ptr(x, b.add(e.mul(at, c), ch)), ln), cf(0.0, ln))
                    wv = e.load(e.ptr(w_, e.add(ch, (ky * kw + kx) * cp)), ln)
                    acc = e.fma(xv, wv, acc, ln)
            finish(acc, o, q, ch, ln)
        channels(body)

    def border_cols(o, lo: int, hi: int):
        e.loop(hi - lo, lambda q: pixel(o, q), start=lo)

    def inner_row(o):
        border_cols(o, 0, ow_lo)
        tiles, edge = divmod(ow_hi - ow_lo, mr)
        e.loop(tiles, lambda t: tile(o, e.add(e.mul(t, mr), ow_lo), mr))
        if edge:
            tile(o, c64(ow_lo + tiles * mr), edge)
        border_cols(o, ow_hi, ow)

    def row(o):
        if oh_lo == 0 and oh_hi == oh:
            inner_row(o)
            return
        inside = b.and_(b.icmp_signed(">=", o, c64(oh_lo)), b.icmp_signed("<", o, c64(oh_hi)))
        e._n += 1
        bi = e.fn.append_basic_block(f"DI{e._n}")
        bb_ = e.fn.append_basic_block(f"DB{e._n}")
        bx = e.fn.append_basic_block(f"DX{e._n}")
        b.cbranch(inside, bi, bb_)
        b.position_at_end(bi)
        inner_row(o)
        b.branch(bx)
        b.position_at_end(bb_)
        border_cols(o, 0, ow)
        b.branch(bx)
        b.position_at_end(bx)
    e.parallel(oh, row)
    e.finish()
    return fn


def pool_core(module: ir.Module, name: str, *, kind: str, c: int, h: int, w: int, oh: int, ow: int,
              kh: int, kw: int, sh: int, sw: int, pads, include_pad: bool, lanes: int,
              nt: int = 1) -> ir.Function:
    """``core(x, y, tid, ctrl)`` of max/avg pooling on one NHWC image (windows clipped at run time)."""
    fn = ir.Function(module, ir.FunctionType(ir.VoidType(), [FP] * 2 + [I64, I8P]), name=name)
    fn.linkage = "internal"
    x, y, tid, ctrl = fn.args
    e = Emitter(module, fn, True, nt, tid, ctrl)
    b = e.b
    pt, pl, pb, pr = pads

    def pixel(o, q):
        hs = b.sub(e.mul(o, sh), c64(pt))
        ws = b.sub(e.mul(q, sw), c64(pl))
        he, we = e.imin(e.add(hs, kh), c64(h)), e.imin(e.add(ws, kw), c64(w))
        hs0, ws0 = e.imax(hs, c64(0)), e.imax(ws, c64(0))
        if kind == "avg":
            if include_pad:
                cnt = b.mul(b.sub(e.imin(e.add(hs, kh), c64(h + pb)), hs),
                            b.sub(e.imin(e.add(ws, kw), c64(w + pr)), ws))
            else:
                cnt = b.mul(b.sub(he, hs0), b.sub(we, ws0))
            fcnt = b.sitofp(cnt, F32)

        def body(ch, ln: int):
            acc = e.alloca(vt(ln), cf(float("-inf") if kind == "max" else 0.0, ln))

            def tapy(iy):
                def tapx(ix):
                    v = e.load(e.ptr(x, b.add(e.mul(b.add(e.mul(iy, w), ix), c), ch)), ln)
                    old = b.load(acc)
                    b.store(e.fmax(v, old) if kind == "max" else b.fadd(old, v), acc)
                e.loop_rt(ws0, we, tapx)
            e.loop_rt(hs0, he, tapy)
            val = b.load(acc)
            if kind == "avg":
                val = b.fdiv(val, e.splat(fcnt, ln))
            e.store(val, e.ptr(y, b.add(e.mul(b.add(e.mul(o, ow), q), c), ch)), ln)

        nvec, tail = divmod(c, lanes)
        e.loop(nvec, lambda cv: body(e.mul(cv, lanes), lanes))
        if tail:
            e.loop(tail, lambda t: body(t, 1), start=nvec * lanes)

    e.parallel(oh, lambda o: e.loop(ow, lambda q: pixel(o, q)))
    e.finish()
    return fn


# -- flat maps and layout conversions ------------------------------------------------------

def emit_map(e: Emitter, n: int, lanes: int, body: Callable, base=None) -> None:
    """``body(index, lanes)`` over ``n`` elements from ``base``: whole vectors, then a scalar tail."""
    nvec, tail = divmod(n, lanes)
    off = (lambda i: i) if base is None else (lambda i: e.b.add(base, i))
    e.loop(nvec, lambda i: body(off(e.mul(i, lanes)), lanes))
    if tail:
        e.loop(tail, lambda i: body(off(i), 1), start=nvec * lanes)


def emit_map_parallel(e: Emitter, n: int, lanes: int, body: Callable) -> None:
    """``emit_map`` split into ``e.nt`` chunks of whole vectors (the last takes the rest)."""
    if e.nt == 1 or n < 4096:  # small maps: one item
        e.single(lambda: emit_map(e, n, lanes, body))
        return
    chunk = -(-n // (4 * e.nt * lanes)) * lanes
    chunks = -(-n // chunk)
    rest = n - (chunks - 1) * chunk

    def one(i):
        b = e.b
        e._n += 1
        full = e.fn.append_basic_block(f"CF{e._n}")
        tail = e.fn.append_basic_block(f"CT{e._n}")
        out = e.fn.append_basic_block(f"CX{e._n}")
        b.cbranch(b.icmp_unsigned("<", i, c64(chunks - 1)), full, tail)
        b.position_at_end(full)
        emit_map(e, chunk, lanes, body, base=e.mul(i, chunk))
        b.branch(out)
        b.position_at_end(tail)
        emit_map(e, rest, lanes, body, base=e.mul(i, chunk))
        b.branch(out)
        b.position_at_end(out)
    e.parallel(chunks, one)


def eltwise_body(e: Emitter, op: str, params, mode: str, swap: bool, n: int, c: int, inner: int,
                 lanes: int, a, bb, y) -> None:
    """One elementwise node: unary (``bb`` None) or binary in broadcast ``mode``.

    ``channel`` mode: ``bb`` holds ``c`` values; with ``inner == 1`` (NHWC) they repeat along the
    flat data, else each value covers ``inner`` consecutive elements (plain NCHW planes).
    """
    b = e.b
    if bb is None:
        fn = UNARY[op]
        emit_map_parallel(e, n, lanes, lambda i, ln: e.store(fn(e, e.load(e.ptr(a, i), ln), params, ln),
                                                              e.ptr(y, i), ln))
        return
    opname = BINARY[op]

    def apply(u, v):
        if opname.startswith("llvm."):
            return b.call(_intrinsic(e.module, opname, getattr(u.type, "count", 1), 2), [u, v])
        return getattr(b, opname)(u, v)

    def combine(u, v):
        return apply(v, u) if swap else apply(u, v)

    if mode == "same":
        emit_map_parallel(e, n, lanes, lambda i, ln: e.store(combine(e.load(e.ptr(a, i), ln), e.load(e.ptr(bb, i), ln)),
                                                     e.ptr(y, i), ln))
    elif mode == "scalar":
        s = b.load(bb, align=4)
        emit_map_parallel(e, n, lanes, lambda i, ln: e.store(combine(e.load(e.ptr(a, i), ln), e.splat(s, ln)),
                                                     e.ptr(y, i), ln))
    elif mode == "row":  # ``bb`` holds ``c`` values repeating along the flat data
        def each_row(r):
            base = e.mul(r, c)
            emit_map(e, c, lanes, lambda i, ln: e.store(
                combine(e.load(e.ptr(a, b.add(base, i)), ln), e.load(e.ptr(bb, i), ln)),
                e.ptr(y, b.add(base, i)), ln))
        e.parallel(n // c, each_row)
    elif inner == 1:
        def pixel(p):
            base = e.mul(p, c)
            emit_map(e, c, lanes, lambda i, ln: e.store(
                combine(e.load(e.ptr(a, b.add(base, i)), ln), e.load(e.ptr(bb, i), ln)),
                e.ptr(y, b.add(base, i)), ln))
        e.parallel(n // c, pixel)
    else:
        def plane(pidx):
            s = e.b.load(e.ptr(bb, b.urem(pidx, c64(c))), align=4)
            base = e.mul(pidx, inner)
            emit_map(e, inner, lanes, lambda i, ln: e.store(
                combine(e.load(e.ptr(a, b.add(base, i)), ln), e.splat(s, ln)),
                e.ptr(y, b.add(base, i)), ln))
        e.parallel(n // inner, plane)


def copy_padded(e: Emitter, src, dst, *, plain: bool, c: int, h: int, w: int, pads, lanes: int) -> None:
    """One image into a zero-haloed NHWC buffer (row stride w + left + right pads), rows split
    across threads; only the halo is zeroed."""
    pt, pl, pb, pr = pads
    wp, hp = w + pl + pr, h + pt + pb
    b = e.b

    def zero(base, n):
        emit_map(e, n, lanes, lambda i, ln: e.store(cf(0.0, ln), e.ptr(dst, i), ln), base=base)

    def interior(r):  # padded row r holds source row r - pt
        d = e.mul(r, wp * c)
        if pl:
            zero(d, pl * c)
        if pr:
            zero(b.add(d, c64((pl + w) * c)), pr * c)
        s_row = b.sub(r, c64(pt))
        if not plain:
            s = e.ptr(src, e.mul(s_row, w * c))
            dd = e.ptr(dst, b.add(d, c64(pl * c)))
            emit_map(e, w * c, lanes, lambda i, ln: e.store(e.load(e.ptr(s, i), ln), e.ptr(dd, i), ln))
            return

        def col(q):
            def chan(ch):
                v = b.load(e.ptr(src, b.add(e.mul(b.add(e.mul(ch, h), s_row), w), q)), align=4)
                b.store(v, e.ptr(dst, b.add(b.add(d, e.mul(e.add(q, pl), c)), ch)), align=4)
            e.loop(c, chan)
        e.loop(w, col)

    def row(r):
        if not (pt or pb):
            interior(r)
            return
        inside = b.and_(b.icmp_signed(">=", r, c64(pt)), b.icmp_signed("<", r, c64(pt + h)))
        e._n += 1
        bi = e.fn.append_basic_block(f"PI{e._n}")
        bz = e.fn.append_basic_block(f"PZ{e._n}")
        bx = e.fn.append_basic_block(f"PX{e._n}")
        b.cbranch(inside, bi, bz)
        b.position_at_end(bi)
        interior(r)
        b.branch(bx)
        b.position_at_end(bz)
        zero(e.mul(r, wp * c), wp * c)
        b.branch(bx)
        b.position_at_end(bx)
    e.parallel(hp, row)


def nhwc_to_plain(e: Emitter, src, dst, *, c: int, p: int) -> None:
    """One image [p][c] → [c][p] (pixels split across threads)."""
    b = e.b

    def pix(q):
        def chan(ch):
            v = b.load(e.ptr(src, b.add(e.mul(q, c), ch)), align=4)
            b.store(v, e.ptr(dst, b.add(e.mul(ch, p), q)), align=4)
        e.loop(c, chan)
    e.parallel(p, pix)


# -- concat and row reductions -------------------------------------------------------------

def concat_body(e: Emitter, outer: int, parts, total: int, lanes: int, srcs, y) -> None:
    """``outer`` rows; input i gives ``parts[i]`` floats per row, at its offset in the output row
    of ``total`` floats. Rows are split across threads in blocks."""
    block = max(1, outer // (8 * e.nt)) if e.nt > 1 else outer
    blocks = -(-outer // block)
    b = e.b

    def rows(start, count: int):
        def one(r):
            off = 0
            for src, n in zip(srcs, parts):
                s_row = e.ptr(src, e.mul(r, n))
                d_row = e.ptr(y, b.add(e.mul(r, total), c64(off)))
                emit_map(e, n, lanes, lambda i, ln: e.store(e.load(e.ptr(s_row, i), ln), e.ptr(d_row, i), ln))
                off += n
        e.loop_rt(start, b.add(start, c64(count)), one) if count > 1 else one(start)

    last = outer - (blocks - 1) * block

    def item(i):
        start = e.mul(i, block)
        if last == block:
            rows(start, block)
            return
        e._n += 1
        full = e.fn.append_basic_block(f"KF{e._n}")
        tail = e.fn.append_basic_block(f"KT{e._n}")
        out = e.fn.append_basic_block(f"KX{e._n}")
        b.cbranch(b.icmp_unsigned("<", i, c64(blocks - 1)), full, tail)
        b.position_at_end(full)
        rows(start, block)
        b.branch(out)
        b.position_at_end(tail)
        rows(start, last)
        b.branch(out)
        b.position_at_end(out)
    e.parallel(blocks, item)


def split_body(e: Emitter, outer: int, parts, total: int, lanes: int, x, dsts) -> None:
    """The inverse of ``concat_body``: row r of output i is ``parts[i]`` floats of input row r."""
    b = e.b

    def row(r):
        off = 0
        for dst, n in zip(dsts, parts):
            s_row = e.ptr(x, b.add(e.mul(r, total), c64(off)))
            d_row = e.ptr(dst, e.mul(r, n))
            emit_map(e, n, lanes, lambda i, ln: e.store(e.load(e.ptr(s_row, i), ln), e.ptr(d_row, i), ln))
            off += n
    e.parallel(outer, row)


def _reduce_row(e: Emitter, n: int, lanes: int, init: float, combine, load):
    """A scalar: ``combine`` over ``load(i, lanes)`` for ``i < n`` (vector accumulator, then its
    lanes, then the scalar tail)."""
    b = e.b
    nvec, tail = divmod(n, lanes)
    acc_s = e.alloca(F32)
    b.store(cf(init), acc_s)
    if nvec:
        acc_v = e.alloca(vt(lanes))
        b.store(cf(init, lanes), acc_v)
        e.loop(nvec, lambda i: b.store(combine(b.load(acc_v), load(e.mul(i, lanes), lanes)), acc_v))
        v = b.load(acc_v)
        s = b.extract_element(v, ir.Constant(I32, 0))
        for k in range(1, lanes):
            s = combine(s, b.extract_element(v, ir.Constant(I32, k)))
        b.store(combine(b.load(acc_s), s), acc_s)
    if tail:
        e.loop(tail, lambda i: b.store(combine(b.load(acc_s), load(i, 1)), acc_s), start=nvec * lanes)
    return b.load(acc_s)


def rows_body(e: Emitter, kind: str, rows: int, n: int, lanes: int, x, y, scale=None, bias=None,
              eps: float = 0.0, mean_out=None, inv_out=None) -> None:
    """Softmax or layer normalization of each row of ``n`` floats (rows split across threads);
    layer normalization also stores each row's mean and 1/std to ``mean_out`` / ``inv_out``."""
    b = e.b

    def row(r):
        xr, yr = e.ptr(x, e.mul(r, n)), e.ptr(y, e.mul(r, n))
        if kind == "softmax":
            m = _reduce_row(e, n, lanes, float("-inf"), e.fmax, lambda i, ln: e.load(e.ptr(xr, i), ln))
            # as the reference: a non-finite max (all -inf, or +inf) shifts by 0
            finite = b.fcmp_ordered("<", e.call1("llvm.fabs", m, 1), cf(float("inf")))
            m = b.select(finite, m, cf(0.0))

            def ex(i, ln):
                v = vexp(e, b.fsub(e.load(e.ptr(xr, i), ln), e.splat(m, ln)), ln)
                e.store(v, e.ptr(yr, i), ln)
            emit_map(e, n, lanes, ex)
            total = _reduce_row(e, n, lanes, 0.0, b.fadd, lambda i, ln: e.load(e.ptr(yr, i), ln))
            emit_map(e, n, lanes, lambda i, ln: e.store(b.fdiv(e.load(e.ptr(yr, i), ln), e.splat(total, ln)),
                                                         e.ptr(yr, i), ln))
            return
        mean = b.fdiv(_reduce_row(e, n, lanes, 0.0, b.fadd, lambda i, ln: e.load(e.ptr(xr, i), ln)),
                      cf(float(n)))

        def sq(i, ln):
            d = b.fsub(e.load(e.ptr(xr, i), ln), e.splat(mean, ln))
            return b.fmul(d, d)
        var = b.fdiv(_reduce_row(e, n, lanes, 0.0, b.fadd, sq), cf(float(n)))
        inv = b.fdiv(cf(1.0), e.call1("llvm.sqrt", b.fadd(var, cf(eps)), 1))
        if mean_out is not None:
            b.store(mean, e.ptr(mean_out, r), align=4)
        if inv_out is not None:
            b.store(inv, e.ptr(inv_out, r), align=4)

        def norm(i, ln):
            v = b.fmul(b.fsub(e.load(e.ptr(xr, i), ln), e.splat(mean, ln)), e.splat(inv, ln))
            v = b.fmul(v, e.load(e.ptr(scale, i), ln))
            if bias is not None:
                v = b.fadd(v, e.load(e.ptr(bias, i), ln))
            e.store(v, e.ptr(yr, i), ln)
        emit_map(e, n, lanes, norm)
    e.parallel(rows, row)


def transpose_body(e: Emitter, shape, perm, x, y) -> None:
    """y = x.transpose(perm) for a plain ``shape``: output-order loops, strided input reads."""
    b = e.b
    rank = len(shape)
    in_strides = [math.prod(shape[i + 1:]) for i in range(rank)]
    out_shape = [shape[p] for p in perm]
    out_strides = [math.prod(out_shape[i + 1:]) for i in range(rank)]

    def level(d, src, dst):
        def body(i):
            s2 = b.add(src, e.mul(i, in_strides[perm[d]]))
            d2 = b.add(dst, e.mul(i, out_strides[d]))
            if d == rank - 1:
                b.store(b.load(e.ptr(x, s2), align=4), e.ptr(y, d2), align=4)
            else:
                level(d + 1, s2, d2)
        if d == 0:
            e.parallel(out_shape[0], body)
        else:
            e.loop(out_shape[d], body)
    level(0, c64(0), c64(0))


def attention_body(e: Emitter, s, q, k, v, y, mask=None) -> None:
    """softmax(scale·q·kᵀ + mask [causal: keys j ≤ i]) · v for an AttentionSchedule ``s``.

    Work items are blocks of query rows of one (batch, head). An item first transposes its KV
    head's K into a stack buffer kᵀ [depth][kv rounded up to vectors], so that a row's scores are
    a vector FMA per depth step (a broadcast q value times a kᵀ row: no horizontal sums); then
    the mask, the softmax over the row's keys, and the rows of V accumulated into the output row.
    A row whose keys are all masked gets zeros (no 0/0)."""
    b = e.b
    lanes, depth, kv_len, q_len = s.lanes, s.depth, s.kv_len, s.q_len
    dv = s.v_depth or depth
    strides = s.strides or ((s.heads * q_len * depth, q_len * depth, depth),
                            (s.kv_heads * kv_len * depth, kv_len * depth, depth),
                            (s.kv_heads * kv_len * dv, kv_len * dv, dv), (s.heads * q_len * dv, q_len * dv, dv))
    (qsb, qsh, qss), (ksb, ksh, kss), (vsb, vsh, vss), (ysb, ysh, yss) = strides
    group = s.heads // s.kv_heads
    kvp = -(-kv_len // lanes) * lanes
    rb = min(q_len, 32)
    blocks = -(-q_len // rb)
    kt = b.bitcast(e.alloca(ir.ArrayType(F32, depth * kvp)), FP)
    sp = b.bitcast(e.alloca(ir.ArrayType(F32, kvp)), FP)
    mb = b.bitcast(mask, ir.IntType(8).as_pointer()) if s.mask == "bool" else mask
    ninf = cf(float("-inf"))

    idx = ir.Constant(ir.VectorType(I64, lanes), [ir.Constant(I64, t) for t in range(lanes)]) \
        if lanes > 1 else c64(0)
    nvd = dv // lanes if dv % lanes == 0 and dv // lanes <= 8 else 0

    def one_row(qb, vb, yb, mrow, i):
        qr = e.ptr(q, b.add(qb, e.mul(i, qss)))
        yr = e.ptr(y, b.add(yb, e.mul(i, yss)))
        n = e.imin(e.add(i, 1), c64(kv_len)) if s.causal else c64(kv_len)

        def scores(jv):  # masked keys (causal, padding) score -inf
            def step(d, acc):
                qd = e.splat(b.load(e.ptr(qr, d), align=4), lanes)
                return [e.fma(qd, e.load(e.ptr(kt, b.add(e.mul(d, kvp), e.mul(jv, lanes))), lanes), acc[0], lanes)]
            acc = e.loop_carry(depth, [cf(0.0, lanes)], step)[0]
            j = b.add(e.splat(e.mul(jv, lanes), lanes) if lanes > 1 else e.mul(jv, lanes), idx)
            ok = b.icmp_signed("<", j, e.splat(n, lanes) if lanes > 1 else n)
            e.store(b.select(ok, b.fmul(acc, cf(s.scale, lanes)), cf(float("-inf"), lanes)),
                    e.ptr(sp, e.mul(jv, lanes)), lanes)
        e.loop(kvp // lanes, scores)
        if s.mask != "none":  # keys past the mask's length are masked
            def add_mask(j):
                at = e.ptr(sp, j)
                if s.mask == "bool":
                    keep = b.icmp_unsigned("!=", b.load(b.gep(mb, [b.add(mrow, j)], inbounds=True)), ir.Constant(ir.IntType(8), 0))
                    b.store(b.select(keep, b.load(at, align=4), ninf), at, align=4)
                else:
                    b.store(b.fadd(b.load(at, align=4), b.load(e.ptr(mb, b.add(mrow, j)), align=4)), at, align=4)
            e.loop(s.mask_len, add_mask)
            e.loop(kv_len - s.mask_len, lambda j: b.store(ninf, e.ptr(sp, j), align=4), start=s.mask_len)
        m = _reduce_row(e, kvp, lanes, float("-inf"), e.fmax, lambda j, ln: e.load(e.ptr(sp, j), ln))
        dead = b.fcmp_ordered("==", m, ninf)  # no attendable key: zeros (vexp(-inf) is ~1e-38, not 0)
        m = b.select(dead, cf(0.0), m)

        def expo(j, ln):
            pj = vexp(e, b.fsub(e.load(e.ptr(sp, j), ln), e.splat(m, ln)), ln)
            e.store(pj, e.ptr(sp, j), ln)
            return pj
        t = _reduce_row(e, kvp, lanes, 0.0, b.fadd, expo)
        tt = b.select(dead, cf(0.0), b.fdiv(cf(1.0), t))
        inv = e.splat(tt, lanes)
        if nvd:  # output row in registers over all keys (masked ones have p = 0)
            def acc_key(j, acc):
                pj = e.splat(b.load(e.ptr(sp, j), align=4), lanes)
                vr = e.ptr(v, b.add(vb, e.mul(j, vss)))
                return [e.fma(pj, e.load(e.ptr(vr, d * lanes), lanes), acc[d], lanes) for d in range(nvd)]
            out = e.loop_carry(kv_len, [cf(0.0, lanes)] * nvd, acc_key)
            for d in range(nvd):
                e.store(b.fmul(out[d], inv), e.ptr(yr, d * lanes), lanes)
            return
        emit_map(e, dv, lanes, lambda d, ln: e.store(cf(0.0, ln), e.ptr(yr, d), ln))

        def accumulate(j):
            pj = b.load(e.ptr(sp, j), align=4)
            vr = e.ptr(v, b.add(vb, e.mul(j, vss)))
            emit_map(e, dv, lanes, lambda d, ln: e.store(
                e.fma(e.splat(pj, ln), e.load(e.ptr(vr, d), ln), e.load(e.ptr(yr, d), ln), ln), e.ptr(yr, d), ln))
        e.loop_rt(c64(0), n, accumulate)
        emit_map(e, dv, lanes, lambda d, ln: e.store(b.fmul(e.load(e.ptr(yr, d), ln), e.splat(tt, ln)),
                                                      e.ptr(yr, d), ln))

    def item(it):
        bh = b.udiv(it, c64(blocks))
        blk = b.urem(it, c64(blocks))
        bi, h = b.udiv(bh, c64(s.heads)), b.urem(bh, c64(s.heads))
        hk = b.udiv(h, c64(group))
        kb = e.ptr(k, b.add(e.mul(bi, ksb), e.mul(hk, ksh)))
        vb = b.add(e.mul(bi, vsb), e.mul(hk, vsh))
        qb, yb = b.add(e.mul(bi, qsb), e.mul(h, qsh)), b.add(e.mul(bi, ysb), e.mul(h, ysh))
        mbase = b.add(e.mul(bi, s.mask_strides[0]), e.mul(h, s.mask_strides[1]))
        if kvp != kv_len:  # zero the padding keys' columns (their scores are never read)
            e.loop(depth, lambda d: e.loop(kvp - kv_len, lambda j: b.store(
                cf(0.0), e.ptr(kt, b.add(e.mul(d, kvp), j)), align=4), start=kv_len))
        e.loop(kv_len, lambda j: e.loop(depth, lambda d: b.store(
            b.load(e.ptr(kb, b.add(e.mul(j, kss), d)), align=4), e.ptr(kt, b.add(e.mul(d, kvp), j)), align=4)))
        lo = e.mul(blk, rb)
        hi = e.imin(e.add(lo, rb), c64(q_len))
        e.loop_rt(lo, hi, lambda i: one_row(qb, vb, yb, b.add(mbase, e.mul(i, s.mask_strides[2])), i))
    e.parallel(s.batch_heads * blocks, item)


# -- softmax over an inner axis and local response normalization -------------------------------

def softmax_strided_body(e: Emitter, rows: int, n: int, inner: int, lanes: int, x, y) -> None:
    """Softmax over an axis of ``n`` entries ``inner`` floats apart, for ``rows`` outer indices
    (items split across threads): vectorized over the ``inner`` positions, each vector walks the
    axis three times (max, exp and sum, scale)."""
    b = e.b

    def row(r):
        xr, yr = e.ptr(x, e.mul(r, n * inner)), e.ptr(y, e.mul(r, n * inner))

        def column(i, ln):
            at = lambda base, c: e.ptr(base, b.add(e.mul(c, inner), i))  # noqa: E731
            m = e.loop_carry(n, [cf(float("-inf"), ln)], lambda c, acc: [e.fmax(acc[0], e.load(at(xr, c), ln))])[0]
            # as the reference: a non-finite max (all -inf, or +inf) shifts by 0
            finite = b.fcmp_ordered("<", e.call1("llvm.fabs", m, ln), cf(float("inf"), ln))
            m = b.select(finite, m, cf(0.0, ln))

            def ex(c, acc):
                v = vexp(e, b.fsub(e.load(at(xr, c), ln), m), ln)
                e.store(v, at(yr, c), ln)
                return [b.fadd(acc[0], v)]
            inv = b.fdiv(cf(1.0, ln), e.loop_carry(n, [cf(0.0, ln)], ex)[0])
            e.loop(n, lambda c: e.store(b.fmul(e.load(at(yr, c), ln), inv), at(yr, c), ln))
        emit_map(e, inner, lanes, column)
    e.parallel(rows, row)


def _lrn_scale(e: Emitter, sumsq, x, *, size: int, alpha: float, beta: float, bias: float, ln: int):
    """x / (bias + alpha/size·sumsq)^beta (beta 0.75, AlexNet's, as two square roots)."""
    b = e.b
    t = b.fadd(cf(bias, ln), b.fmul(cf(alpha / size, ln), sumsq))
    if beta == 0.75:
        r = e.call1("llvm.sqrt", t, ln)
        return b.fdiv(x, b.fmul(r, e.call1("llvm.sqrt", r, ln)))
    if beta == 0.5:
        return b.fdiv(x, e.call1("llvm.sqrt", t, ln))
    if beta == 1.0:
        return b.fdiv(x, t)
    powf = _intrinsic(e.module, "llvm.pow", ln, 2)
    return b.fdiv(x, b.call(powf, [t, cf(beta, ln)]))


def lrn_body(e: Emitter, *, n: int, c: int, pixels: int, nhwc: bool, size: int, alpha: float, beta: float,
             bias: float, lanes: int, x, y) -> None:
    """Local response normalization across ``c`` channels (window: ``(size-1)//2`` channels
    before, the rest after, zero outside).

    NHWC: per pixel, the squares of its channel row go into a zero-padded stack buffer, then each
    channel vector sums ``size`` shifted loads of it. Plain: per (image, channel) plane, vectorized
    over pixels, the window's channel planes are summed (the window clipped at run time)."""
    b = e.b
    lo = (size - 1) // 2
    hi = size - 1 - lo
    params = dict(size=size, alpha=alpha, beta=beta, bias=bias)
    if nhwc:
        width = -(-(c + size - 1) // lanes) * lanes + lanes
        buf = b.bitcast(e.alloca(ir.ArrayType(F32, width)), FP)

        def pixel(p):
            xr, yr = e.ptr(x, e.mul(p, c)), e.ptr(y, e.mul(p, c))
            emit_map(e, width, lanes, lambda i, ln: e.store(cf(0.0, ln), e.ptr(buf, i), ln))
            emit_map(e, c, lanes, lambda i, ln: e.store(
                (lambda v: b.fmul(v, v))(e.load(e.ptr(xr, i), ln)), e.ptr(buf, b.add(i, c64(lo))), ln))

            def out(i, ln):
                s = e.load(e.ptr(buf, i), ln)
                for j in range(1, size):
                    s = b.fadd(s, e.load(e.ptr(buf, b.add(i, c64(j))), ln))
                e.store(_lrn_scale(e, s, e.load(e.ptr(xr, i), ln), ln=ln, **params), e.ptr(yr, i), ln)
            emit_map(e, c, lanes, out)
        e.parallel(n * pixels, pixel)
        return

    def plane(item):
        img = b.udiv(item, c64(c))
        ch = b.urem(item, c64(c))
        base = e.mul(img, c * pixels)
        first = e.imax(b.sub(ch, c64(lo)), c64(0))
        last = e.imin(b.add(ch, c64(hi + 1)), c64(c))
        acc = e.alloca(vt(lanes))
        acc1 = e.alloca(F32)

        def px(i, ln):
            slot = acc if ln > 1 else acc1
            b.store(cf(0.0, ln), slot)

            def add(j):
                v = e.load(e.ptr(x, b.add(base, b.add(b.mul(j, c64(pixels)), i))), ln)
                b.store(b.fadd(b.load(slot), b.fmul(v, v)), slot)
            e.loop_rt(first, last, add)
            at = b.add(base, b.add(b.mul(ch, c64(pixels)), i))
            e.store(_lrn_scale(e, b.load(slot), e.load(e.ptr(x, at), ln), ln=ln, **params), e.ptr(y, at), ln)
        emit_map(e, pixels, lanes, px)
    e.parallel(n * c, plane)


# -- products with a computed B ---------------------------------------------------------------

def _offset(e: Emitter, offsets, bi):
    """offsets[bi]: a multiply when they are evenly spaced, else a load from a constant table."""
    step = offsets[1] - offsets[0] if len(offsets) > 1 else 0
    if all(v == i * step for i, v in enumerate(offsets)):
        return e.b.mul(bi, c64(step))
    t = ir.ArrayType(I64, len(offsets))
    g = ir.GlobalVariable(e.module, t, e.module.get_unique_name("mm_offsets"))
    g.initializer = ir.Constant(t, [c64(v) for v in offsets])
    g.global_constant = True
    g.linkage = "internal"
    return e.b.load(e.b.gep(g, [c64(0), bi], inbounds=True), align=8)


def matmul_body(e: Emitter, s, act: str, params, a, bm, c, y) -> None:
    """y = act(alpha·op(A)·op(B) + beta·C) for a MatmulSchedule ``s`` (B read in place).

    Items are (batch, row) pairs. B as is: output vectors accumulate a broadcast A value times
    a row of B per K step; transB: each output is a dot product of two rows along K."""
    b = e.b
    m, n, k = s.m, s.n, s.k

    def row(item):
        bi = b.udiv(item, c64(m))
        i = b.urem(item, c64(m))
        ab, bb = e.ptr(a, _offset(e, s.a_offsets, bi)), e.ptr(bm, _offset(e, s.b_offsets, bi))
        yr = e.ptr(y, e.mul(item, n))

        def a_at(kk):  # A'[i, kk]
            return b.load(e.ptr(ab, b.add(e.mul(kk, m), i) if s.trans_a else b.add(e.mul(i, k), kk)), align=4)

        def finish(acc, j, ln):
            v = b.fmul(acc, cf(s.alpha, ln)) if s.alpha != 1.0 else acc
            if c is not None:
                rs, cs = s.c_strides
                at = e.ptr(c, b.add(b.mul(i, c64(rs)), b.mul(j, c64(cs))))
                cv = e.load(at, ln) if cs == 1 else e.splat(b.load(at, align=4), ln)
                v = b.fadd(v, b.fmul(cv, cf(s.beta, ln)) if s.beta != 1.0 else cv)
            e.store(activation(e, v, act, params, ln), e.ptr(yr, j), ln)

        if not s.trans_b:
            def cols(j, ln):
                acc = e.loop_carry(k, [cf(0.0, ln)], lambda kk, acc: [e.fma(
                    e.splat(a_at(kk), ln), e.load(e.ptr(bb, b.add(e.mul(kk, n), j)), ln), acc[0], ln)])[0]
                finish(acc, j, ln)
            emit_map(e, n, s.lanes, cols)
            return

        def col(j):
            brow = e.ptr(bb, e.mul(j, k))
            if s.trans_a:
                acc = e.loop_carry(k, [cf(0.0)], lambda kk, acc: [e.fma(
                    a_at(kk), b.load(e.ptr(brow, kk), align=4), acc[0], 1)])[0]
            else:
                arow = e.ptr(ab, e.mul(i, k))
                acc = _reduce_row(e, k, s.lanes, 0.0, b.fadd, lambda kk, ln: b.fmul(
                    e.load(e.ptr(arow, kk), ln), e.load(e.ptr(brow, kk), ln)))
            finish(acc, j, 1)
        e.loop(n, col)
    e.parallel(s.batch * m, row)
