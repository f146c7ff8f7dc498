"""llvmlite IR for the integer-only quantized kernels (schedules: qir.lowering.kernels_int8).

Every kernel reproduces its qint reference kernel bit for bit (docs/quantization.md).

u8 × s8 → s32 products. The path is chosen per host by ``int8_dot``: on x86 one of these two,

- **VNNI** (AVX-512 with ``avx512vnni``): ``vpdpbusd`` multiplies 4 u8 activations by 4 s8
  weights and adds the four products to an i32 lane, exactly (no intermediate saturation).
  Activations are staged as u8 NHWC, weights packed ``[taps][Cg/4][nr][4]`` i8.
- **widening** (AVX2, or AVX-512 without VNNI): ``vpmaddubsw`` is NOT used: it adds its two
  u8·s8 products into a *saturating* int16 (up to 2·255·127 = 64770 > 32767), which is not exact
  for full-range weights, and restricting weights to 7 bits would change the quantization. The
  activations are instead staged zero-extended to u16 (``vpmovzxbw`` in the staging copy) and the
  weights packed sign-extended to i16 ``[taps][Cg/2][nr][2]``, so ``vpmaddwd`` (i16·i16 pairs
  summed into i32) is exact: 2·255·128 < 2^31. Half the throughput of ``vpmaddubsw`` per
  instruction, but exact for every i8 weight.

Elsewhere (AArch64 NEON, or any host with ``QIR_KRYO_INT8_DOT=portable``) the widening layout
with plain LLVM vector IR instead of ``vpmaddwd`` (``_dot_portable``; NEON gets ``smull``/
``smlal``). Opt-in for AArch64 library builds (``QIR_KRYO_INT8_DOT``), on the VNNI layout:
``dotprod`` (``sdot`` on x − 128, the 128·Σw correction in the packed bias) and ``i8mm``
(``usdot``). Everything else here is plain IR already (the requantization, element-wise ops).

Then the requantization (i32 lanes, per output channel): a = acc + (b − zx·Σw);
t = (a·M + 2^30) >> 31 from 32×32→64-bit products of the even and odd lanes (``vpmuldq``);
then either y = (t + 2^(s−1) + zy·2^s) >> s (one add, one shift: used when the lowering proved
it cannot overflow, ``QGemmSchedule.folded``) or y = (t >> s) + ((t >> (s−1)) & 1) + zy (the
same rounding shift without any overflow); clamp to [y_min, y_max].

Layouts: qconv reads and writes NHWC u8 in the arena when its neighbours do (plain NCHW is
converted through scratch); a padded or widened input is staged into a haloed buffer whose halo
holds the input zero point (real zero). Depthwise convs read NHWC in place: interior pixels
without checks, border pixels select the zero point for taps outside the image.

The element-wise kernels (qint.add / mul / requantize / mean) run the reference's int64 sequence
literally (``rq64``: the high multiply split at bit 24 like qir.ir.fixedpoint._high_mul), so even
wrapping cases agree.
"""

from __future__ import annotations

import os

import numpy as np
from llvmlite import ir

from qir.errors import OptionError
from qir.ir.types import DType
from qir.lowering.kernels import NHWC
from qir.lowering.kernels_int8 import Q_ROWS, QConvLayout, conv_params, qconv_layout
from qir.targets.kryo import codegen as cg

I1 = ir.IntType(1)
I8 = ir.IntType(8)
I16 = ir.IntType(16)
I32 = ir.IntType(32)
I64 = ir.IntType(64)
I8P = I8.as_pointer()

_ITYPES = {"u8": (I8, False), "i8": (I8, True), "u16": (I16, False), "i16": (I16, True),
           "i32": (I32, True)}


def use_vnni(h) -> bool:
    """Whether code for host ``h`` uses ``vpdpbusd`` (AVX-512 VNNI) for u8·s8 dot products."""
    return h.isa.name == "avx512" and "+avx512vnni" in h.features.split(",")


#: ``$QIR_KRYO_INT8_DOT`` values (see ``int8_dot``).
DOT_CHOICES = ("portable", "dotprod", "i8mm")
#: Paths that read the VNNI layout (u8 activations, weights ``[taps][Cg/4][nr][4]`` i8).
_BYTE_LAYOUT = ("vnni", "i8mm", "dotprod")


def int8_dot(h) -> str:
    """The u8·s8 dot-product path for host ``h``:

    - ``"vnni"`` (x86 ``vpdpbusd``) or ``"pmaddwd"`` (x86 widening), see the module docstring;
    - ``"portable"``: the widening layout with plain LLVM vector IR (the i16 pairs sign-extended to
      i32, multiplied, even and odd products added; exact like ``vpmaddwd``), which every backend
      selects (AArch64 NEON: ``smull``/``smlal``). AArch64 takes it unless the host has i8mm;
      ``QIR_KRYO_INT8_DOT=portable`` forces it on x86 too (tests cover it there);
    - ``"i8mm"``: AArch64 hosts whose features include ``+i8mm`` (Armv8.6; not Cortex-A76) use
      ``usdot`` (4 u8·s8 products into an i32 lane, exact, like ``vpdpbusd``) on the VNNI layout.
      ``QIR_KRYO_INT8_DOT=i8mm`` makes the library's aarch64 host have it (ignored on x86);
    - ``"dotprod"``: AArch64 hosts with ``+dotprod`` (Armv8.2+, Cortex-A76 has it) but not i8mm:
      ``sdot`` (s8·s8) on the VNNI layout with the activations flipped to x − 128 (XOR 0x80 as
      they are loaded); Σ(x − 128)·w + 128·Σw = Σx·w, the 128·Σw folded into the packed bias.
      ``QIR_KRYO_INT8_DOT=dotprod`` selects it for the library's aarch64 host."""
    forced = os.environ.get("QIR_KRYO_INT8_DOT", "")
    if forced and forced not in DOT_CHOICES:
        raise OptionError(f"QIR_KRYO_INT8_DOT={forced!r} is not a dot-product path; "
                          f"known: {', '.join(DOT_CHOICES)} (or unset it)")
    if forced == "portable":
        return "portable"
    if h.triple.startswith("aarch64"):
        feats = h.features.split(",")
        return "i8mm" if "+i8mm" in feats else "dotprod" if "+dotprod" in feats else "portable"
    if not h.triple.startswith("x86_64"):
        return "portable"
    return "vnni" if use_vnni(h) else "pmaddwd"


def _itype(name: str):
    """(LLVM integer type, signed) of a DType value such as "u8"."""
    return _ITYPES[DType(name).value]


def _vec(t, lanes: int):
    return t if lanes == 1 else ir.VectorType(t, lanes)


def _const(t, value: int, lanes: int = 1):
    c = ir.Constant(t, int(value))
    return c if lanes == 1 else ir.Constant(ir.VectorType(t, lanes), [c] * lanes)


def _bytes(e: cg.Emitter, p):
    return e.b.bitcast(p, I8P)


def _at(e: cg.Emitter, base, offset):
    """``base`` (i8*) + ``offset`` bytes (int or i64 value)."""
    if isinstance(offset, int):
        if offset == 0:
            return base
        offset = cg.c64(offset)
    return e.b.gep(base, [offset], inbounds=True)


def _load(e: cg.Emitter, p, t, align: int = 1):
    return e.b.load(e.b.bitcast(p, t.as_pointer()), align=align)


def _store(e: cg.Emitter, v, p, align: int = 1):
    e.b.store(v, e.b.bitcast(p, v.type.as_pointer()), align=align)


def _ext(e: cg.Emitter, v, signed: bool, t):
    if v.type == t:
        return v
    return e.b.sext(v, t) if signed else e.b.zext(v, t)


def _smax(e, a, b):
    return e.b.select(e.b.icmp_signed(">", a, b), a, b)


def _smin(e, a, b):
    return e.b.select(e.b.icmp_signed("<", a, b), a, b)


def _intrinsic(e: cg.Emitter, name: str, ret, args):
    fn = e.module.globals.get(name)
    if fn is None:
        fn = ir.Function(e.module, ir.FunctionType(ret, [a.type for a in args]), name=name)
    return e.b.call(fn, args)


def store_partial(e: cg.Emitter, vec, p, valid, lanes: int, always_full: bool = False) -> None:
    """Store the first ``valid`` (i64, run time) lanes of ``vec`` at ``p`` (i8*): one vector store
    when all are valid (always, when ``always_full`` is known at compile time), else a lane loop."""
    if always_full:
        _store(e, vec, p)
        return
    b = e.b
    full = b.icmp_signed(">=", valid, cg.c64(lanes))
    with b.if_else(full) as (then, other):
        with then:
            _store(e, vec, p)
        with other:
            elem = vec.type.element
            e.loop_rt(cg.c64(0), e.imax(e.imin(valid, cg.c64(lanes)), cg.c64(0)), lambda i: _store(
                e, b.extract_element(vec, b.trunc(i, I32)), _at(e, p, b.mul(i, cg.c64(elem.width // 8)))))


# -- the exact requantization ---------------------------------------------------------------

def _high_mul(e: cg.Emitter, a, mult, lanes: int):
    """(a·M + 2^30) >> 31 per i32 lane, exact: 32×32→64-bit products of the even and the odd
    lanes (``vpmuldq`` reads the sign-extended low half of each 64-bit lane), recombined."""
    b = e.b
    if lanes == 1 or lanes % 2:
        v64 = _vec(I64, lanes)
        prod = b.mul(b.sext(a, v64), b.sext(mult, v64))
        return b.trunc(b.ashr(b.add(prod, _const(I64, 1 << 30, lanes)), _const(I64, 31, lanes)),
                       _vec(I32, lanes))
    half = lanes // 2
    q64 = ir.VectorType(I64, half)
    a64, m64 = b.bitcast(a, q64), b.bitcast(mult, q64)
    c32, c31, c1 = _const(I64, 32, half), _const(I64, 31, half), _const(I64, 1, half)
    rnd = _const(I64, 1 << 30, half)
    even = b.add(b.mul(b.ashr(b.shl(a64, c32), c32), b.ashr(b.shl(m64, c32), c32)), rnd)
    odd = b.add(b.mul(b.ashr(a64, c32), b.ashr(m64, c32)), rnd)
    te = b.bitcast(b.lshr(even, c31), ir.VectorType(I32, lanes))  # t of even lanes in the low halves
    to = b.bitcast(b.shl(odd, c1), ir.VectorType(I32, lanes))  # t of odd lanes in the high halves
    pick = [i if i % 2 == 0 else lanes + i for i in range(lanes)]
    return b.shuffle_vector(te, to, ir.Constant(ir.VectorType(I32, lanes), pick))


def requant32(e: cg.Emitter, acc, beff, mult, shift, rounding, s, lanes: int):
    """(acc + beff) requantized per lane (i32 vectors), + zy, clamped to [s.lo, s.hi]; i32.

    With ``s.folded`` (checked at lowering: no overflow) the rounding shift and the zero point
    are (t + rounding) >> shift; otherwise (t >> s) + ((t >> (s−1)) & 1) + zy."""
    b = e.b
    t = _high_mul(e, b.add(acc, beff), mult, lanes)
    if s.folded:
        y = b.ashr(b.add(t, rounding), shift)
    else:
        zero = _const(I32, 0, lanes)
        pos = b.icmp_signed(">", shift, zero)
        sm1 = b.select(pos, b.sub(shift, _const(I32, 1, lanes)), zero)
        bit = b.and_(b.ashr(t, sm1), b.zext(pos, _vec(I32, lanes)))
        y = b.add(b.add(b.ashr(t, shift), bit), _const(I32, s.y_zero_point, lanes))
    return _smin(e, _smax(e, y, _const(I32, s.lo, lanes)), _const(I32, s.hi, lanes))


def rq64(e: cg.Emitter, a, multiplier: int, shift: int, lanes: int):
    """qir.ir.fixedpoint.multiply_by_quantized_multiplier on i64 lanes, operation for operation."""
    b = e.b

    def k(v):
        return _const(I64, v, lanes)
    left, right = max(-shift, 0), max(shift, 0)
    if left:
        a = b.shl(a, k(left))
    high = b.ashr(a, k(24))
    low = b.and_(a, k((1 << 24) - 1))
    m = k(multiplier)
    partial = b.add(b.mul(high, m), b.ashr(b.add(b.mul(low, m), k(1 << 30)), k(24)))
    t = b.ashr(partial, k(7))
    if right:
        t = b.ashr(b.add(t, k(1 << (right - 1))), k(right))
    return t


def _finish64(e: cg.Emitter, y, zy: int, lo: int, hi: int, out_t, lanes: int):
    b = e.b
    y = b.add(y, _const(I64, zy, lanes))
    y = _smin(e, _smax(e, y, _const(I64, lo, lanes)), _const(I64, hi, lanes))
    return b.trunc(y, _vec(out_t, lanes)) if out_t.width < 64 else y


# -- dot products ----------------------------------------------------------------------------

def _dot(e: cg.Emitter, acc, xv, wv, lanes: int, dot: str):
    """acc + Σ over each lane's group of x·w (u8·s8 by 4 with VNNI, u16·i16 by 2 otherwise)."""
    if dot == "portable":
        return _dot_portable(e, acc, xv, wv, lanes)
    if dot == "dotprod":  # xv holds x − 128 (see gemm_tiles)
        return _intrinsic(e, f"llvm.aarch64.neon.sdot.v{lanes}i32.v{lanes * 4}i8", acc.type, [acc, xv, wv])
    if dot == "i8mm":
        return _intrinsic(e, f"llvm.aarch64.neon.usdot.v{lanes}i32.v{lanes * 4}i8", acc.type, [acc, xv, wv])
    if dot == "vnni":
        return _intrinsic(e, f"llvm.x86.avx512.vpdpbusd.{lanes * 32}", acc.type, [acc, xv, wv])
    name = {16: "llvm.x86.avx512.pmaddw.d.512", 8: "llvm.x86.avx2.pmadd.wd",
            4: "llvm.x86.sse2.pmadd.wd"}[lanes]
    return e.b.add(acc, _intrinsic(e, name, acc.type, [xv, wv]))


def _dot_portable(e: cg.Emitter, acc, xv, wv, lanes: int):
    """``vpmaddwd`` in plain IR: i16·i16 → i32 products, adjacent pairs added (exact: |x·w| ≤
    255·128, so a pair fits in i32 with room)."""
    b = e.b
    prod = b.mul(b.sext(xv, ir.VectorType(I32, 2 * lanes)), b.sext(wv, ir.VectorType(I32, 2 * lanes)))

    def pick(first):
        return b.shuffle_vector(prod, prod, ir.Constant(ir.VectorType(I32, lanes),
                                                        list(range(first, 2 * lanes, 2))))
    return b.add(acc, b.add(pick(0), pick(1)))


def _wvec_type(lanes: int, vnni: bool):
    return ir.VectorType(I8, lanes * 4) if vnni else ir.VectorType(I16, lanes * 2)


# -- staging ---------------------------------------------------------------------------------

def _fill(e: cg.Emitter, dst, count: int, value: int, et) -> None:
    """``count`` elements of type ``et`` at ``dst`` (i8*) set to ``value``."""
    chunk = 64 // (et.width // 8)
    full = count // chunk
    vec = _const(et, value, chunk)
    e.loop(full, lambda i: _store(e, vec, _at(e, dst, e.b.mul(i, cg.c64(64)))))
    for j in range(full * chunk, count):
        _store(e, _const(et, value), _at(e, dst, j * et.width // 8))


def fill_halo(e: cg.Emitter, dst, g, lay: QConvLayout, zx: int, et) -> None:
    """The padding of the staging buffer set to the input zero point (real zero): the top and
    bottom rows whole, the left and right columns of the others (rows across threads)."""
    pt, pl, pb, pr = g.pads
    if not any(g.pads):
        return
    b = e.b
    px = lay.cs * lay.xb  # bytes per staged pixel

    def row(r):
        edge = b.or_(b.icmp_signed("<", r, cg.c64(pt)), b.icmp_signed(">=", r, cg.c64(pt + g.h)))
        base = _at(e, dst, b.mul(r, cg.c64(g.wp * px)))
        with b.if_else(edge) as (then, other):
            with then:
                _fill(e, base, g.wp * lay.cs, zx, et)
            with other:
                _fill(e, base, pl * lay.cs, zx, et)
                _fill(e, _at(e, base, (pl + g.w) * px), pr * lay.cs, zx, et)
    e.parallel(g.hp, row)


def stage_nchw(e: cg.Emitter, src, dst, g, lay: QConvLayout, zx: int) -> None:
    """One NCHW u8 image into the zero-point-haloed NHWC staging buffer (``lay.xb`` bytes per
    element: u16 for the widening path). Channels are split across threads."""
    et = I8 if lay.xb == 1 else I16
    pt, pl = g.pads[0], g.pads[1]
    fill_halo(e, dst, g, lay, zx, et)
    b = e.b

    def chan(c):
        def row(hh):
            s_row = _at(e, src, b.add(b.mul(c, cg.c64(g.h * g.w)), b.mul(hh, cg.c64(g.w))))
            d_row = b.add(b.mul(b.add(hh, cg.c64(pt)), cg.c64(g.wp)), cg.c64(pl))

            def col(ww):
                v = _ext(e, b.load(_at(e, s_row, ww)), False, et)
                pix = b.add(d_row, ww)
                _store(e, v, _at(e, dst, b.mul(b.add(b.mul(pix, cg.c64(lay.cs)), c), cg.c64(lay.xb))))
            e.loop(g.w, col)
        e.loop(g.h, row)
    e.parallel(g.c, chan)


def _copy_elems(e: cg.Emitter, src, dst, count: int, et) -> None:
    """``count`` u8 at ``src`` to ``dst`` as ``et`` (zero-extended): 16 at a time, then a tail."""
    b = e.b
    eb = et.width // 8
    full = count // 16

    def vec(i):
        v = _load(e, _at(e, src, b.mul(i, cg.c64(16))), ir.VectorType(I8, 16))
        _store(e, _ext(e, v, False, ir.VectorType(et, 16)), _at(e, dst, b.mul(i, cg.c64(16 * eb))))
    e.loop(full, vec)
    for j in range(full * 16, count):
        _store(e, _ext(e, b.load(_at(e, src, j)), False, et), _at(e, dst, j * eb))


def stage_nhwc(e: cg.Emitter, src, dst, g, lay: QConvLayout, zx: int) -> None:
    """One NHWC u8 image into the zero-point-haloed staging buffer (pixel stride ``lay.cs``,
    u16 for the widening path). Rows are split across threads."""
    et = I8 if lay.xb == 1 else I16
    pt, pl = g.pads[0], g.pads[1]
    fill_halo(e, dst, g, lay, zx, et)
    b = e.b

    def row(hh):
        def pix(ww):
            s_px = _at(e, src, b.mul(b.add(b.mul(hh, cg.c64(g.w)), ww), cg.c64(g.c)))
            d_px = b.add(b.mul(b.add(hh, cg.c64(pt)), cg.c64(g.wp)), b.add(ww, cg.c64(pl)))
            _copy_elems(e, s_px, _at(e, dst, b.mul(d_px, cg.c64(lay.cs * lay.xb))), g.c, et)
        e.loop(g.w, pix)
    e.parallel(g.h, row)


def stage_rows(e: cg.Emitter, src, dst, rows: int, k: int, lay: QConvLayout) -> None:
    """[rows][k] u8 rows into [rows][cs] staging rows (u16 for the widening path)."""
    et = I8 if lay.xb == 1 else I16
    b = e.b

    def row(r):
        s_row = _at(e, src, b.mul(r, cg.c64(k)))
        d_row = _at(e, dst, b.mul(r, cg.c64(lay.cs * lay.xb)))
        lanes = 16
        full = k // lanes

        def vec(i):
            v = _load(e, _at(e, s_row, b.mul(i, cg.c64(lanes))), ir.VectorType(I8, lanes))
            _store(e, _ext(e, v, False, ir.VectorType(et, lanes)), _at(e, d_row, b.mul(i, cg.c64(lanes * lay.xb))))
        e.loop(full, vec)
        for j in range(full * lanes, k):
            _store(e, _ext(e, b.load(_at(e, s_row, j)), False, et), _at(e, d_row, j * lay.xb))
    e.parallel(rows, row)


def nhwc_to_nchw(e: cg.Emitter, src, dst, c: int, p: int) -> None:
    """One u8 image [p][c] → [c][p] (channels split across threads)."""
    b = e.b

    def chan(ch):
        def pix(q):
            v = b.load(_at(e, src, b.add(b.mul(q, cg.c64(c)), ch)))
            b.store(v, _at(e, dst, b.add(b.mul(ch, cg.c64(p)), q)))
        e.loop(p, pix)
    e.parallel(c, chan)


# -- the implicit GEMM -----------------------------------------------------------------------

def gemm_tiles(e: cg.Emitter, k, lay: QConvLayout, xs, dst, w, q, dot: str) -> None:
    """All output tiles of one image: ``xs`` the staged NHWC input (i8*), ``dst`` NHWC output;
    ``dot`` the u8·s8 path (``int8_dot``)."""
    g, s = k.geometry, k.schedule
    b = e.b
    lanes, nv, nr = s.lanes, s.nv, s.nr
    mg, cg_ = g.m // g.groups, g.c // g.groups
    panels = -(-mg // nr)
    taps = g.kh * g.kw
    nkb = lay.cgk // lay.kg
    oh, ow = g.oh, g.ow
    wvt = _wvec_type(lanes, dot in _BYTE_LAYOUT)
    vbytes = lanes * 4
    panel_bytes = taps * nkb * nr * 4
    unroll = next(u for u in (4, 2, 1) if nkb % u == 0)
    acc_t = ir.VectorType(I32, lanes)

    def item(idx):
        gi = b.udiv(idx, cg.c64(panels * oh))
        p = b.urem(b.udiv(idx, cg.c64(oh)), cg.c64(panels))
        oy = b.urem(idx, cg.c64(oh))
        gp = b.add(b.mul(gi, cg.c64(panels)), p)
        wpanel = _at(e, w, b.mul(gp, cg.c64(panel_bytes)))
        qpanel = _at(e, q, b.mul(gp, cg.c64(Q_ROWS * nr * 4)))
        qv = [[_load(e, _at(e, qpanel, (part * nr + j * lanes) * 4), acc_t, 4) for j in range(nv)]
              for part in range(Q_ROWS)]
        ch0 = b.mul(p, cg.c64(nr))
        chan_off = b.mul(gi, cg.c64(cg_ * lay.xb))

        def tile(ox0, rr):
            def tap(t, accs):
                ky, kx = b.udiv(t, cg.c64(g.kw)), b.urem(t, cg.c64(g.kw))
                row = b.add(b.mul(oy, cg.c64(g.sh)), b.mul(ky, cg.c64(g.dh)))
                col = b.add(b.mul(ox0, cg.c64(g.sw)), b.mul(kx, cg.c64(g.dw)))
                pix = b.add(b.mul(row, cg.c64(g.wp)), col)
                xrow = _at(e, xs, b.add(b.mul(pix, cg.c64(lay.cs * lay.xb)), chan_off))
                wtap = _at(e, wpanel, b.mul(t, cg.c64(nkb * nr * 4)))

                def kstep(i, accs):
                    accs = list(accs)
                    for u in range(unroll):
                        kb = b.add(b.mul(i, cg.c64(unroll)), cg.c64(u))
                        xp = _at(e, xrow, b.mul(kb, cg.c64(lay.kg * lay.xb)))
                        wp_ = _at(e, wtap, b.mul(kb, cg.c64(nr * 4)))
                        wv = [_load(e, _at(e, wp_, j * vbytes), wvt, vbytes) for j in range(nv)]
                        for r in range(rr):
                            xi = _load(e, _at(e, xp, r * g.sw * lay.cs * lay.xb), I32)
                            if dot == "dotprod":  # 4 u8 → 4 s8 x − 128
                                xi = b.xor(xi, _const(I32, 0x80808080 - (1 << 32)))
                            xv = b.bitcast(e.splat(xi, lanes), wvt)
                            for j in range(nv):
                                accs[r * nv + j] = _dot(e, accs[r * nv + j], xv, wv[j], lanes, dot)
                    return accs
                return e.loop_carry(nkb // unroll, accs, kstep)
            accs = e.loop_carry(taps, [_const(I32, 0, lanes)] * (rr * nv), tap)
            for r in range(rr):
                pix = b.add(b.mul(oy, cg.c64(ow)), b.add(ox0, cg.c64(r)))
                base = b.add(b.mul(pix, cg.c64(g.m)), b.add(b.mul(gi, cg.c64(mg)), ch0))
                for j in range(nv):
                    y = requant32(e, accs[r * nv + j], *(row[j] for row in qv), s, lanes)
                    valid = b.sub(cg.c64(mg), b.add(ch0, cg.c64(j * lanes)))
                    store_partial(e, b.trunc(y, ir.VectorType(I8, lanes)),
                                  _at(e, dst, b.add(base, cg.c64(j * lanes))), valid, lanes, mg % nr == 0)

        full = ow // s.mr
        e.loop(full, lambda t: tile(b.mul(t, cg.c64(s.mr)), s.mr))
        if ow % s.mr:
            tile(cg.c64(full * s.mr), ow % s.mr)
    e.parallel(g.groups * panels * oh, item)


def _interior(n_out: int, size: int, k: int, stride: int, dil: int, pad: int) -> tuple[int, int]:
    """Output positions [lo, hi) whose taps all fall inside an input of ``size``."""
    lo = -(-pad // stride)
    hi = (size - 1 - (k - 1) * dil + pad) // stride + 1
    lo = min(lo, n_out)
    return lo, max(lo, min(hi, n_out))


def depthwise_tiles(e: cg.Emitter, k, lay: QConvLayout, xs, dst, w, q) -> None:
    """Depthwise conv of one image: per output pixel and channel vector, taps unrolled, u8
    activations widened to i32 times i32-packed weights. Staged input (``lay.stage_x``: haloed,
    channels padded to vectors) is read without checks; NHWC input is read in place, where the
    taps of border pixels outside the image read the zero point (real zero) instead."""
    g, s = k.geometry, k.schedule
    b = e.b
    lanes, cp = s.lanes, lay.cs
    nvec = cp // lanes
    vt32 = ir.VectorType(I32, lanes)
    vt8 = ir.VectorType(I8, lanes)
    staged = lay.stage_x
    # in place: input coordinates are output·stride − pad + tap·dilation, row width g.w
    off_y, off_x, width = (0, 0, g.wp) if staged else (-g.pads[0], -g.pads[1], g.w)
    zx_vec = _const(I8, s.x_zero_point, lanes)

    def pixel(oy, ox, checked: bool):
        def cvec(cv):
            c0 = b.mul(cv, cg.c64(lanes))
            acc = _const(I32, 0, lanes)
            for t in range(g.kh * g.kw):
                ky, kx = divmod(t, g.kw)
                iy = b.add(b.mul(oy, cg.c64(g.sh)), cg.c64(ky * g.dh + off_y))
                ix = b.add(b.mul(ox, cg.c64(g.sw)), cg.c64(kx * g.dw + off_x))
                if checked:
                    ok = b.and_(b.icmp_unsigned("<", iy, cg.c64(g.h)), b.icmp_unsigned("<", ix, cg.c64(g.w)))
                    iy, ix = b.select(ok, iy, cg.c64(0)), b.select(ok, ix, cg.c64(0))
                px = b.add(b.mul(iy, cg.c64(width)), ix)
                xv = _load(e, _at(e, xs, b.add(b.mul(px, cg.c64(cp)), c0)), vt8)
                if checked:
                    xv = b.select(ok, xv, zx_vec)
                wv = _load(e, _at(e, w, b.mul(b.add(cg.c64(t * cp), c0), cg.c64(4))), vt32, 4)
                acc = b.add(acc, b.mul(b.zext(xv, vt32), wv))
            qv = [_load(e, _at(e, q, b.mul(b.add(cg.c64(part * cp), c0), cg.c64(4))), vt32, 4)
                  for part in range(Q_ROWS)]
            y = requant32(e, acc, *qv, s, lanes)
            out = b.add(b.mul(b.add(b.mul(oy, cg.c64(g.ow)), ox), cg.c64(g.c)), c0)
            store_partial(e, b.trunc(y, vt8), _at(e, dst, out), b.sub(cg.c64(g.c), c0), lanes, g.c % lanes == 0)
        e.loop(nvec, cvec)

    if staged:
        e.parallel(g.oh, lambda oy: e.loop(g.ow, lambda ox: pixel(oy, ox, False)))
        return
    ylo, yhi = _interior(g.oh, g.h, g.kh, g.sh, g.dh, g.pads[0])
    xlo, xhi = _interior(g.ow, g.w, g.kw, g.sw, g.dw, g.pads[1])

    def row(oy):
        inside = b.and_(b.icmp_signed(">=", oy, cg.c64(ylo)), b.icmp_signed("<", oy, cg.c64(yhi)))
        with b.if_else(inside) as (then, other):
            with then:
                e.loop(xlo, lambda ox: pixel(oy, ox, True))
                e.loop(xhi - xlo, lambda ox: pixel(oy, ox, False), start=xlo)
                e.loop(g.ow - xhi, lambda ox: pixel(oy, ox, True), start=xhi)
            with other:
                e.loop(g.ow, lambda ox: pixel(oy, ox, True))
    e.parallel(g.oh, row)


#: Signature of a qconv core: (x image, y image, packed w, packed q, staging scratch, output
#: scratch, tid, control block), all byte pointers but tid.
CORE_SIG = ir.FunctionType(ir.VoidType(), [I8P] * 6 + [I64, I8P])


def emit_qconv(mb, e: cg.Emitter, node, k) -> None:
    """qint.conv (NCHW or NHWC u8 in and out) and qint.matmul (rows): one call per image of a
    core function shared by every node with the same geometry, schedule and layouts."""
    g, s = k.geometry, k.schedule
    dot = int8_dot(mb.host)
    vnni = dot in _BYTE_LAYOUT
    x_nhwc = k.kernel == "qgemm" or mb.lw.layouts.get(node.inputs[0].name) == NHWC or g.h * g.w == 1
    y_nhwc = k.kernel == "qgemm" or mb.lw.layouts.get(node.output.name) == NHWC or g.oh * g.ow == 1
    lay = qconv_layout(k, vnni, x_nhwc, y_nhwc)
    b = e.b
    x = _bytes(e, mb.vptr(e, node.inputs[0]))
    y = _bytes(e, mb.vptr(e, node.output))
    w, q = _bytes(e, mb.wptr(e, node, "w")), _bytes(e, mb.wptr(e, node, "q"))
    xs_buf = _bytes(e, mb.scratch(e, 0))
    ys_buf = _bytes(e, mb.scratch(e, lay.x_bytes))
    in_img, out_img = g.c * g.h * g.w, g.m * g.oh * g.ow

    def make(name):
        fn = ir.Function(mb.module, CORE_SIG, name=name)
        fn.linkage = "internal"
        ce = cg.Emitter(mb.module, fn, mb.isa.fma, mb.nt, fn.args[6], fn.args[7])
        _qconv_image(ce, k, lay, dot, x_nhwc, *fn.args[:6])
        ce.finish()
        return fn
    key = ("qconv", k.kernel, g.c, g.h, g.w, g.m, g.oh, g.ow, g.kh, g.kw, g.sh, g.sw, g.dh, g.dw, g.pads,
           g.groups, s, lay, dot, x_nhwc, y_nhwc)
    core = mb.core(key, make)

    def image(n):
        xi, yi = _at(e, x, b.mul(n, cg.c64(in_img))), _at(e, y, b.mul(n, cg.c64(out_img)))
        b.call(core, [xi, yi, w, q, xs_buf, ys_buf, e.tid, e.ctrl])
    e.loop(g.n, image)


def _qconv_image(e: cg.Emitter, k, lay: QConvLayout, dot: str, x_nhwc: bool, xi, yi, w, q, xs_buf,
                 ys_buf) -> None:
    """One image of a qconv/qgemm: staging, the tiles, the output conversion."""
    g, s = k.geometry, k.schedule
    src = xi
    if lay.stage_x:
        src = xs_buf
        if k.kernel == "qgemm":
            stage_rows(e, xi, xs_buf, g.w, g.c, lay)
        elif x_nhwc:
            stage_nhwc(e, xi, xs_buf, g, lay, s.x_zero_point)
        else:
            stage_nchw(e, xi, xs_buf, g, lay, s.x_zero_point)
    dst = ys_buf if lay.y_bytes else yi
    if s.kind == "depthwise":
        depthwise_tiles(e, k, lay, src, dst, w, q)
    else:
        gemm_tiles(e, k, lay, src, dst, w, q, dot)
    if lay.y_bytes:
        nhwc_to_nchw(e, dst, yi, g.m, g.oh * g.ow)


def pack_qconv(node, k, host) -> dict[str, np.ndarray]:
    """The packed weights ("w") and per-channel [bias − zx·Σw, M, shift] ("q") of a qconv/qgemm."""
    g, s = k.geometry, k.schedule
    dot = int8_dot(host)
    vnni = dot in _BYTE_LAYOUT
    lay = qconv_layout(k, vnni)
    cp_ = conv_params(node)
    w = cp_.w  # [M, Cg, KH, KW] int64
    if s.kind == "depthwise":
        cp = lay.cs
        wp = np.zeros((g.kh * g.kw, cp), np.int32)
        wp[:, :g.c] = w.reshape(g.c, -1).T
        qp = np.zeros((Q_ROWS, cp), np.int32)
        qp[:, :g.c] = cp_.bias, cp_.multiplier, cp_.shift, cp_.rounding
        return {"w": wp, "q": qp}
    groups, taps = g.groups, g.kh * g.kw
    mg, cgc = g.m // groups, g.c // groups
    nr = s.nr
    panels = -(-mg // nr)
    wt = np.zeros((groups, panels * nr, taps, lay.cgk), np.int64)
    wt[:, :mg, :, :cgc] = w.reshape(groups, mg, cgc, taps).transpose(0, 1, 3, 2)
    # [G][P][nr][taps][nkb][kg] → [G][P][taps][nkb][nr][kg]
    wt = wt.reshape(groups, panels, nr, taps, lay.cgk // lay.kg, lay.kg).transpose(0, 1, 3, 4, 2, 5)
    wp = np.ascontiguousarray(wt).astype(np.int8 if vnni else np.int16)
    qp = np.zeros((Q_ROWS, groups, panels * nr), np.int64)
    bias = cp_.bias + 128 * w.reshape(w.shape[0], -1).sum(axis=1) if dot == "dotprod" else cp_.bias
    for part, vals in enumerate((bias, cp_.multiplier, cp_.shift, cp_.rounding)):
        qp[part, :, :mg] = vals.reshape(groups, mg)
    qp = qp.reshape(Q_ROWS, groups, panels, nr).transpose(1, 2, 0, 3).astype(np.int32)
    return {"w": wp, "q": qp}


# -- element-wise ----------------------------------------------------------------------------

def _flat_map(e: cg.Emitter, n: int, lanes: int, body) -> None:
    """body(offset_i64, lanes) over ``n`` elements: vectors, then a scalar tail."""
    b = e.b
    full = n // lanes
    e.loop(full, lambda i: body(b.mul(i, cg.c64(lanes)), lanes))
    e.loop(n - full * lanes, lambda i: body(i, 1), start=full * lanes)


def emit_qeltwise(mb, e: cg.Emitter, node, k) -> None:
    s = k.schedule
    p = dict(s.params)
    b = e.b
    ins = [(_bytes(e, mb.vptr(e, v)), *_itype(t)) for v, t in zip([v for v in node.inputs if v is not None],
                                                                   s.in_types)]
    out_t, _ = _itype(s.out_type)
    y = _bytes(e, mb.vptr(e, node.output))
    lanes = 8

    def body(off, ln):
        def value(i):
            ptr, t, signed = ins[i]
            v = _load(e, _at(e, ptr, b.mul(off, cg.c64(t.width // 8))), _vec(t, ln))
            return _ext(e, v, signed, _vec(I64, ln))

        def k64(v):
            return _const(I64, v, ln)
        if s.op == "clip":
            ptr, t, signed = ins[0]
            v = _load(e, _at(e, ptr, b.mul(off, cg.c64(t.width // 8))), _vec(t, ln))
            cmp = b.icmp_signed if signed else b.icmp_unsigned
            lo, hi = _const(t, p["lo"], ln), _const(t, p["hi"], ln)
            v = b.select(cmp("<", v, lo), lo, v)
            _store(e, b.select(cmp(">", v, hi), hi, v), _at(e, y, b.mul(off, cg.c64(t.width // 8))))
            return
        if s.op == "requantize":
            a = b.shl(b.sub(value(0), k64(p["x_zero_point"])), k64(p["left_shift"]))
        elif s.op == "mul":
            a = b.mul(b.sub(value(0), k64(p["a_zero_point"])), b.sub(value(1), k64(p["b_zero_point"])))
        else:  # add
            sa = rq64(e, b.shl(b.sub(value(0), k64(p["a_zero_point"])), k64(p["left_shift"])),
                      p["a_multiplier"], p["a_shift"], ln)
            sb = rq64(e, b.shl(b.sub(value(1), k64(p["b_zero_point"])), k64(p["left_shift"])),
                      p["b_multiplier"], p["b_shift"], ln)
            a = b.add(sa, sb)
        r = _finish64(e, rq64(e, a, p["multiplier"], p["shift"], ln), p["y_zero_point"], p["lo"], p["hi"],
                      out_t, ln)
        _store(e, r, _at(e, y, b.mul(off, cg.c64(out_t.width // 8))))
    _flat_map(e, s.n, lanes, body)


def emit_qmean(mb, e: cg.Emitter, node, k) -> None:
    s = k.schedule
    b = e.b
    x = _bytes(e, mb.vptr(e, node.inputs[0]))
    y = _bytes(e, mb.vptr(e, node.output))
    xt, signed = _itype(s.in_type)
    out_t, _ = _itype(s.out_type)
    xbytes = xt.width // 8
    lanes = 16
    full = s.length // lanes

    def row(r):
        base = _at(e, x, b.mul(r, cg.c64(s.length * xbytes)))

        def vec(i, accs):
            v = _load(e, _at(e, base, b.mul(i, cg.c64(lanes * xbytes))), ir.VectorType(xt, lanes))
            return [b.add(accs[0], _ext(e, v, signed, ir.VectorType(I32, lanes)))]
        acc = e.loop_carry(full, [_const(I32, 0, lanes)], vec)[0]
        total = b.sext(_intrinsic(e, f"llvm.vector.reduce.add.v{lanes}i32", I32, [acc]), I64)

        def tail(i, accs):
            v = b.load(b.bitcast(_at(e, base, b.mul(i, cg.c64(xbytes))), xt.as_pointer()))
            return [b.add(accs[0], _ext(e, v, signed, I64))]
        total = e.loop_carry(s.length - full * lanes, [total], tail, start=full * lanes)[0]
        a = b.shl(b.sub(total, cg.c64(s.length * s.x_zero_point)), cg.c64(s.left_shift))
        out = _finish64(e, rq64(e, a, s.multiplier, s.shift, 1), s.y_zero_point, s.lo, s.hi, out_t, 1)
        _store(e, out, _at(e, y, b.mul(r, cg.c64(out_t.width // 8))))
    e.parallel(s.rows, row)


def emit_qlookup(mb, e: cg.Emitter, node, k) -> None:
    s = k.schedule
    b = e.b
    x = _bytes(e, mb.vptr(e, node.inputs[0]))
    y = _bytes(e, mb.vptr(e, node.output))
    table = _bytes(e, mb.wptr(e, node, "table"))
    xt, signed = _itype(s.in_type)
    out_t, _ = _itype(s.out_type)
    low = -(1 << (xt.width - 1)) if signed else 0
    ob = out_t.width // 8

    def elem(i):
        v = _ext(e, b.load(b.bitcast(_at(e, x, b.mul(i, cg.c64(xt.width // 8))), xt.as_pointer())), signed, I64)
        idx = b.sub(v, cg.c64(low))
        val = b.load(b.bitcast(_at(e, table, b.mul(idx, cg.c64(ob))), out_t.as_pointer()))
        b.store(val, b.bitcast(_at(e, y, b.mul(i, cg.c64(ob))), out_t.as_pointer()))
    e.loop(s.n, elem)


def pack_qlookup(node, k, host) -> dict[str, np.ndarray]:
    return {"table": np.ascontiguousarray(node.inputs[1].const)}


def _maxpool_plain(e: cg.Emitter, x, y, g, t, signed: bool) -> None:
    """Max pooling of plain NCHW images: scalar, windows clipped at run time, planes across threads."""
    b = e.b
    eb = t.width // 8
    lowest = -(1 << (t.width - 1)) if signed else 0
    slot = e.alloca(t)
    cmp = b.icmp_signed if signed else b.icmp_unsigned

    def plane(pl):
        xp = _at(e, x, b.mul(pl, cg.c64(g.h * g.w * eb)))
        yp = _at(e, y, b.mul(pl, cg.c64(g.oh * g.ow * eb)))

        def orow(oy):
            hs = b.sub(b.mul(oy, cg.c64(g.sh)), cg.c64(g.pads[0]))
            h0, h1 = e.imax(hs, cg.c64(0)), e.imin(b.add(hs, cg.c64(g.kh)), cg.c64(g.h))

            def ocol(ox):
                ws = b.sub(b.mul(ox, cg.c64(g.sw)), cg.c64(g.pads[1]))
                w0, w1 = e.imax(ws, cg.c64(0)), e.imin(b.add(ws, cg.c64(g.kw)), cg.c64(g.w))
                b.store(ir.Constant(t, lowest), slot)

                def hh(i):
                    def ww(j):
                        v = b.load(b.bitcast(_at(e, xp, b.mul(b.add(b.mul(i, cg.c64(g.w)), j), cg.c64(eb))),
                                             t.as_pointer()))
                        cur = b.load(slot)
                        b.store(b.select(cmp(">", v, cur), v, cur), slot)
                    e.loop_rt(w0, w1, ww)
                e.loop_rt(h0, h1, hh)
                out = b.add(b.mul(oy, cg.c64(g.ow)), ox)
                b.store(b.load(slot), b.bitcast(_at(e, yp, b.mul(out, cg.c64(eb))), t.as_pointer()))
            e.loop(g.ow, ocol)
        e.loop(g.oh, orow)
    e.parallel(g.c, plane)


def _maxpool_nhwc(e: cg.Emitter, x, y, g, t, signed: bool) -> None:
    """Max pooling of one NHWC image, vectorized over channels (16 at a time, then a scalar
    tail); windows clipped at run time; output rows across threads."""
    b = e.b
    eb = t.width // 8
    lowest = -(1 << (t.width - 1)) if signed else 0
    cmp = b.icmp_signed if signed else b.icmp_unsigned
    lanes = 16
    nvec = g.c // lanes
    slots = {ln: e.alloca(_vec(t, ln)) for ln in (lanes, 1)}

    def orow(oy):
        hs = b.sub(b.mul(oy, cg.c64(g.sh)), cg.c64(g.pads[0]))
        h0, h1 = e.imax(hs, cg.c64(0)), e.imin(b.add(hs, cg.c64(g.kh)), cg.c64(g.h))

        def ocol(ox):
            ws = b.sub(b.mul(ox, cg.c64(g.sw)), cg.c64(g.pads[1]))
            w0, w1 = e.imax(ws, cg.c64(0)), e.imin(b.add(ws, cg.c64(g.kw)), cg.c64(g.w))
            out = _at(e, y, b.mul(b.add(b.mul(oy, cg.c64(g.ow)), ox), cg.c64(g.c * eb)))

            def chunk(c0, ln):
                slot = slots[ln]
                b.store(_const(t, lowest, ln), slot)

                def hh(i):
                    def ww(j):
                        px = b.add(b.mul(i, cg.c64(g.w)), j)
                        v = _load(e, _at(e, x, b.mul(b.add(b.mul(px, cg.c64(g.c)), c0), cg.c64(eb))), _vec(t, ln))
                        cur = b.load(slot)
                        b.store(b.select(cmp(">", v, cur), v, cur), slot)
                    e.loop_rt(w0, w1, ww)
                e.loop_rt(h0, h1, hh)
                _store(e, b.load(slot), _at(e, out, b.mul(c0, cg.c64(eb))))
            e.loop(nvec, lambda cv: chunk(b.mul(cv, cg.c64(lanes)), lanes))
            e.loop(g.c - nvec * lanes, lambda c: chunk(c, 1), start=nvec * lanes)
        e.loop(g.ow, ocol)
    e.parallel(g.oh, orow)


def emit_qmaxpool(mb, e: cg.Emitter, node, k) -> None:
    """Max pooling on integers in either layout; a plain↔NHWC output goes through scratch."""
    g, s = k.geometry, k.schedule
    b = e.b
    t, signed = _itype(s.in_type)
    eb = t.width // 8
    x = _bytes(e, mb.vptr(e, node.inputs[0]))
    y = _bytes(e, mb.vptr(e, node.outputs[0]))
    x_nhwc = mb.lw.layouts.get(node.inputs[0].name) == NHWC
    y_nhwc = mb.lw.layouts.get(node.outputs[0].name) == NHWC
    if g.oh * g.ow == 1:  # one pixel: both layouts have the same bytes
        y_nhwc = x_nhwc
    elif g.h * g.w == 1:
        x_nhwc = y_nhwc
    scratch = _bytes(e, mb.scratch(e, 0))
    in_img, out_img = g.c * g.h * g.w * eb, g.c * g.oh * g.ow * eb

    def image(n):
        xi, yi = _at(e, x, b.mul(n, cg.c64(in_img))), _at(e, y, b.mul(n, cg.c64(out_img)))
        dst = yi if x_nhwc == y_nhwc else scratch
        (_maxpool_nhwc if x_nhwc else _maxpool_plain)(e, xi, dst, g, t, signed)
        if x_nhwc and not y_nhwc:
            nhwc_to_nchw(e, dst, yi, g.c, g.oh * g.ow)
        elif y_nhwc and not x_nhwc:
            nhwc_to_nchw(e, dst, yi, g.oh * g.ow, g.c)  # [c][p] → [p][c]
    e.loop(g.n, image)


def emit_qcopy(mb, e: cg.Emitter, node, k) -> None:
    s = k.schedule
    src, dst = mb.lw.plan.buffers.get(node.inputs[0].name), mb.lw.plan.buffers.get(node.output.name)
    if src is not None and dst is not None and src.offset == dst.offset:
        return  # computed in place
    t, _ = _itype(s.in_type)
    nbytes = s.n * t.width // 8
    x = _bytes(e, mb.vptr(e, node.inputs[0]))
    y = _bytes(e, mb.vptr(e, node.output))
    _intrinsic(e, "llvm.memmove.p0.p0.i64", ir.VoidType(), [y, x, cg.c64(nbytes), ir.Constant(I1, 0)])


def emit_qconcat(mb, e: cg.Emitter, node, k) -> None:
    """Row by row, each input's bytes copied after the previous ones' (rows across threads)."""
    s = k.schedule
    b = e.b
    total = sum(s.parts)
    srcs = [_bytes(e, mb.vptr(e, v)) for v in node.inputs]
    y = _bytes(e, mb.vptr(e, node.output))

    def row(r):
        at = 0
        for src, part in zip(srcs, s.parts):
            _intrinsic(e, "llvm.memmove.p0.p0.i64", ir.VoidType(),
                       [_at(e, y, b.add(b.mul(r, cg.c64(total)), cg.c64(at))), _at(e, src, b.mul(r, cg.c64(part))),
                        cg.c64(part), ir.Constant(I1, 0)])
            at += part
    e.parallel(s.outer, row)


#: Code emitters per int8 kernel kind: ``fn(module_builder, emitter, node, kernel)``.
EMITTERS = {"qconv": emit_qconv, "qgemm": emit_qconv, "qeltwise": emit_qeltwise, "qmean": emit_qmean,
            "qlookup": emit_qlookup, "qmaxpool": emit_qmaxpool, "qcopy": emit_qcopy,
            "qconcat": emit_qconcat}

#: Packers per int8 kernel kind: ``fn(node, kernel, host) -> {slot: array}`` (any dtype; the
#: bytes are stored at the slot, zero-padded to its size).
PACKERS = {"qconv": pack_qconv, "qgemm": pack_qconv, "qlookup": pack_qlookup}


def pack_bytes(arrays: dict[str, np.ndarray], key: str, floats: int) -> np.ndarray:
    """``arrays[key]``'s bytes as ``floats`` float32 words (zero-padded) for the weights blob."""
    raw = np.ascontiguousarray(arrays[key]).view(np.uint8).reshape(-1)
    if raw.size > floats * 4:
        raise AssertionError(f"packed {raw.size} bytes for a slot of {floats * 4}")
    out = np.zeros(floats * 4, np.uint8)
    out[:raw.size] = raw
    return out.view(np.float32)

