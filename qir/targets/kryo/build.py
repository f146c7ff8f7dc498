"""One llvmlite module per (graph, shapes): node wrappers, segment functions and ``run``.

Every function has the signature ``void f(i8* arena, i8* weights, i8** inputs, i64 tid)``:
``arena`` holds the memory plan's buffers (offsets are IR constants), then scratch, then the
thread control block; ``weights`` the packed constants; ``inputs`` the addresses of the graph
inputs; ``tid`` the calling thread's index. ``node<i>`` runs node i of the graph (exported, for
per-node profiling), ``seg<k>`` the k-th run of consecutive generated nodes, ``run`` all of them
(valid when no node falls back).

Kernel cores with identical parameters are emitted once per module (ResNets repeat blocks).
"""

from __future__ import annotations

import hashlib
import math
import threading

import llvmlite.binding as llvm
from llvmlite import ir

from qir.ir.graph import Node, Value
from qir.lowering.kernels import NHWC, PLAIN, LoweredGraph, NodeKernel, conversions
from qir.targets.kryo import codegen as cg
from qir.targets.kryo import codegen_int8 as cg8
from qir.targets.kryo.host import Host, target_machine

def _source_digest() -> str:
    """A digest of the code generator's own sources: any edit invalidates cached objects."""
    from pathlib import Path

    import qir.lowering.kernels as lk
    import qir.lowering.memory as lm

    h = hashlib.sha256()
    for path in sorted(Path(__file__).parent.glob("*.py")) + [Path(lk.__file__), Path(lm.__file__),
                                                                   Path(lk.kernels_int8.__file__)]:
        h.update(path.read_bytes())
    return h.hexdigest()[:16]


#: Part of the cache key and of context binaries: generated code from another generator differs.
CODEGEN_VERSION = f"kryo-codegen-1-{_source_digest()}"

#: Counts of expensive steps, for tests (``codegen`` = modules built and compiled to objects).
STATS = {"codegen": 0, "cache_hits": 0, "loads": 0}

SIG = ir.FunctionType(ir.VoidType(), [cg.I8P, cg.I8P, cg.I8P.as_pointer(), cg.I64])

#: Most threads generated code supports (the control block has a slot per thread).
MAX_THREADS = 64
#: Bytes after the arena and scratch for the thread control block (see codegen.Emitter.parallel).
CONTROL_BYTES = 8 * (16 + 8 * MAX_THREADS)


class ModuleBuilder:
    def __init__(self, lowered: LoweredGraph, host: Host, num_threads: int = 1):
        self.lw = lowered
        self.nt = num_threads
        self.host = host
        self.isa = lowered.isa
        self.module = ir.Module(name="kryo")
        self.module.triple = host.triple
        self.cores: dict[tuple, ir.Function] = {}
        self.input_index = {v.name: i for i, v in enumerate(lowered.graph.inputs)}

    # -- pointers inside a wrapper --
    def vptr(self, e: cg.Emitter, v: Value):
        arena, weights, inputs, _tid = e.fn.args
        buf = self.lw.plan.buffers.get(v.name)
        if buf is not None:
            return e.b.bitcast(e.b.gep(arena, [cg.c64(buf.offset)], inbounds=True), cg.FP)
        if v.name in self.input_index:
            p = e.b.load(e.b.gep(inputs, [cg.c64(self.input_index[v.name])], inbounds=True))
            return e.b.bitcast(p, cg.FP)
        raise AssertionError(f"%{v.name} has no address")

    def wptr(self, e: cg.Emitter, node: Node, key: str):
        slot = self.lw.weights.get((node.name, key))
        if slot is None:
            return ir.Constant(cg.FP, None)
        return e.b.bitcast(e.b.gep(e.fn.args[1], [cg.c64(slot.offset * 4)], inbounds=True), cg.FP)

    def scratch(self, e: cg.Emitter, offset: int):
        off = self.lw.plan.arena_size + offset
        return e.b.bitcast(e.b.gep(e.fn.args[0], [cg.c64(off)], inbounds=True), cg.FP)

    def control(self, e: cg.Emitter):
        off = self.lw.plan.arena_size + _al(self.lw.scratch_size)
        return e.b.gep(e.fn.args[0], [cg.c64(off)], inbounds=True)

    def core(self, key: tuple, make) -> ir.Function:
        key = key + (self.nt,)
        fn = self.cores.get(key)
        if fn is None:
            name = "core_" + hashlib.sha1(repr(key).encode()).hexdigest()[:12]
            fn = self.cores[key] = make(name)
        return fn

    # -- node wrappers --
    def node_fn(self, idx: int, node: Node) -> ir.Function:
        fn = ir.Function(self.module, SIG, name=f"node{idx}")  # exported: the profiler calls it
        e = cg.Emitter(self.module, fn, self.isa.fma, self.nt, fn.args[3])
        e.ctrl = self.control(e)
        k = self.lw.kernels[node.name]
        if k.kernel in cg8.EMITTERS:  # integer kernels (qint ops)
            cg8.EMITTERS[k.kernel](self, e, node, k)
            e.finish()
            return fn
        {"conv": self._conv, "gemm": self._gemm, "pool": self._pool, "eltwise": self._eltwise,
         "concat": self._concat, "split": self._split, "rows": self._rows,
         "transpose": self._transpose, "attention": self._attention, "lrn": self._lrn,
         "matmul": self._matmul}[k.kernel](e, node, k)
        e.finish()
        return fn

    def _layout(self, v: Value) -> str:
        return self.lw.layouts.get(v.name, PLAIN)

    def _conv(self, e: cg.Emitter, node: Node, k: NodeKernel) -> None:
        g, s, ep = k.geometry, k.schedule, k.epilogue
        lanes = self.isa.lanes
        cv = conversions(node, k, self.lw.layouts)
        x_plain, y_plain, res_plain = cv.x_plain, cv.y_plain, cv.res_plain
        res = node.inputs[3] if ep.residual else None
        if s.kind == "depthwise":
            key = ("dw", g.c, g.h, g.w, g.pads, g.oh, g.ow, g.kh, g.kw, g.sh, g.sw, g.dh, g.dw, s.gemm.mr,
                   lanes, ep.activation, ep.params, ep.bias, ep.residual, self.isa.fma)
            core = self.core(key, lambda name: cg.depthwise_core(
                self.module, name, c=g.c, h=g.h, w=g.w, pads=g.pads, oh=g.oh, ow=g.ow, kh=g.kh, kw=g.kw,
                sh=g.sh, sw=g.sw,
                dh=g.dh, dw=g.dw, mr=s.gemm.mr, lanes=lanes, act=ep.activation, params=ep.params,
                bias=ep.bias, residual=ep.residual, fma=self.isa.fma, nt=self.nt))
        else:
            oh, ow = (1, g.oh * g.ow) if s.flat_rows else (g.oh, g.ow)
            key = ("conv", g.c, g.wp, g.groups, g.m, oh, ow, g.kh, g.kw, g.sh, g.sw, g.dh, g.dw,
                   s.gemm, ep.activation, ep.params, ep.bias, ep.residual, self.isa.fma)
            core = self.core(key, lambda name: cg.conv_core(
                self.module, name, c=g.c, wp=g.wp, cg=g.c // g.groups, mg=g.m // g.groups, m=g.m,
                groups=g.groups, oh=oh, ow=ow, kh=g.kh, kw=g.kw, sh=g.sh, sw=g.sw, dh=g.dh, dw=g.dw,
                mr=s.gemm.mr, nv=s.gemm.nv, lanes=lanes, unroll=s.gemm.unroll, act=ep.activation,
                params=ep.params, bias=ep.bias, residual=ep.residual, fma=self.isa.fma, nt=self.nt))
        x, y = self.vptr(e, node.inputs[0]), self.vptr(e, node.output)
        r = self.vptr(e, res) if res is not None else ir.Constant(cg.FP, None)
        w, bias = self.wptr(e, node, "w"), self.wptr(e, node, "b")
        in_img, out_img = g.c * g.h * g.w, g.m * g.oh * g.ow
        need_in = s.pad_copy or x_plain

        def image(n):
            xi, yi = e.ptr(x, e.mul(n, in_img)), e.ptr(y, e.mul(n, out_img))
            src, dst, ri = xi, yi, r
            if need_in:
                src = self.scratch(e, cv.x_offset)
                cg.copy_padded(e, xi, src, plain=x_plain, c=g.c, h=g.h, w=g.w,
                               pads=g.pads if s.pad_copy else (0, 0, 0, 0), lanes=lanes)
            if y_plain:
                dst = self.scratch(e, cv.y_offset)
            if res is not None:
                ri = e.ptr(r, e.mul(n, out_img))
                if res_plain:
                    conv_r = self.scratch(e, cv.res_offset)
                    cg.copy_padded(e, ri, conv_r, plain=True, c=g.m, h=g.oh, w=g.ow, pads=(0, 0, 0, 0),
                                   lanes=lanes)
                    ri = conv_r
            # every step is a parallel region that ends when all its items are done, so the next
            # step (and the next image, which reuses the scratch) sees complete data
            e.b.call(core, [src, w, bias, ri, dst, e.tid, e.ctrl])
            if y_plain:
                cg.nhwc_to_plain(e, dst, yi, c=g.m, p=g.oh * g.ow)
        e.loop(g.n, image)

    def _gemm(self, e: cg.Emitter, node: Node, k: NodeKernel) -> None:
        g, s, ep = k.geometry, k.schedule, k.epilogue
        key = ("conv", g.c, g.w, 1, g.m, 1, g.ow, 1, 1, 1, 1, 1, 1, s.gemm, ep.activation, ep.params,
               ep.bias, ep.residual, self.isa.fma)
        core = self.core(key, lambda name: cg.conv_core(
            self.module, name, c=g.c, wp=g.w, cg=g.c, mg=g.m, m=g.m, groups=1, oh=1, ow=g.ow, kh=1, kw=1,
            sh=1, sw=1, dh=1, dw=1, mr=s.gemm.mr, nv=s.gemm.nv, lanes=self.isa.lanes, unroll=s.gemm.unroll,
            act=ep.activation, params=ep.params, bias=ep.bias, residual=ep.residual, fma=self.isa.fma,
            nt=self.nt))
        r = self.vptr(e, node.inputs[2]) if ep.residual else ir.Constant(cg.FP, None)
        e.b.call(core, [self.vptr(e, node.inputs[0]), self.wptr(e, node, "w"), self.wptr(e, node, "b"),
                        r, self.vptr(e, node.output), e.tid, e.ctrl])

    def _pool(self, e: cg.Emitter, node: Node, k: NodeKernel) -> None:
        g, s = k.geometry, k.schedule
        lanes = self.isa.lanes
        kind = "max" if s.kind.endswith("max") else "avg"
        key = ("pool", kind, g.c, g.h, g.w, g.oh, g.ow, g.kh, g.kw, g.sh, g.sw, g.pads, s.count_include_pad, lanes)
        core = self.core(key, lambda name: cg.pool_core(
            self.module, name, kind=kind, c=g.c, h=g.h, w=g.w, oh=g.oh, ow=g.ow, kh=g.kh, kw=g.kw, sh=g.sh,
            sw=g.sw, pads=g.pads, include_pad=s.count_include_pad, lanes=lanes, nt=self.nt))
        cv = conversions(node, k, self.lw.layouts)
        x_plain, y_plain = cv.x_plain, cv.y_plain
        x, y = self.vptr(e, node.inputs[0]), self.vptr(e, node.outputs[0])
        in_img, out_img = g.c * g.h * g.w, g.c * g.oh * g.ow

        def image(n):
            xi, yi = e.ptr(x, e.mul(n, in_img)), e.ptr(y, e.mul(n, out_img))
            src, dst = xi, yi
            if x_plain:
                src = self.scratch(e, cv.x_offset)
                cg.copy_padded(e, xi, src, plain=True, c=g.c, h=g.h, w=g.w, pads=(0, 0, 0, 0), lanes=lanes)
            if y_plain:
                dst = self.scratch(e, cv.y_offset)
            e.b.call(core, [src, dst, e.tid, e.ctrl])
            if y_plain:
                cg.nhwc_to_plain(e, dst, yi, c=g.c, p=g.oh * g.ow)
        e.loop(g.n, image)

    def _eltwise(self, e: cg.Emitter, node: Node, k: NodeKernel) -> None:
        s = k.schedule
        out = node.output
        shape = self.lw.plan.buffers[out.name].shape
        n = math.prod(shape)
        a = self.vptr(e, node.inputs[1 if s.swap else 0])
        bb = None
        c, inner = 1, 1
        if s.op in cg.BINARY:
            small = node.inputs[0 if s.swap else 1]
            bb = self.wptr(e, node, "c") if small.const is not None else self.vptr(e, small)
            if s.mode == "channel":
                c = shape[1]
                inner = 1 if self._layout(out) == NHWC else math.prod(shape[2:])
            elif s.mode == "row":
                c = shape[-1]
        cg.eltwise_body(e, s.op, s.params, s.mode, s.swap, n, c, inner, self.isa.lanes, a, bb,
                        self.vptr(e, out))

    def _concat(self, e: cg.Emitter, node: Node, k: NodeKernel) -> None:
        shape = self.lw.plan.buffers[node.output.name].shape
        axis = k.schedule.axis
        nhwc = self._layout(node.output) == NHWC
        if nhwc:  # rows are pixels, each input gives its channels
            outer = shape[0] * math.prod(shape[2:])
            parts = [_static(v)[1] for v in node.inputs]
        else:
            outer = math.prod(shape[:axis])
            parts = [math.prod(_static(v)[axis:]) for v in node.inputs]
        cg.concat_body(e, outer, parts, sum(parts), self.isa.lanes, [self.vptr(e, v) for v in node.inputs],
                       self.vptr(e, node.output))

    def _split(self, e: cg.Emitter, node: Node, k: NodeKernel) -> None:
        shape = _static(node.inputs[0])
        axis = k.schedule.axis
        outs = [v for v in node.outputs if v is not None]
        parts = [math.prod(_static(v)[axis:]) for v in outs]
        cg.split_body(e, math.prod(shape[:axis]), parts, sum(parts), self.isa.lanes, self.vptr(e, node.inputs[0]),
                      [self.vptr(e, v) for v in outs])

    def _attention(self, e: cg.Emitter, node: Node, k: NodeKernel) -> None:
        s = k.schedule
        q, kk, v = (self.vptr(e, x) for x in node.inputs[:3])
        mask = None
        if s.mask != "none":
            m = node.inputs[3]
            mask = self.wptr(e, node, "mask") if m.const is not None else self.vptr(e, m)
        cg.attention_body(e, s, q, kk, v, self.vptr(e, node.outputs[0]), mask)

    def _matmul(self, e: cg.Emitter, node: Node, k: NodeKernel) -> None:
        s, ep = k.schedule, k.epilogue
        c = None
        if s.c_strides is not None:
            cv = node.inputs[2]
            c = self.wptr(e, node, "c") if cv.const is not None else self.vptr(e, cv)
        cg.matmul_body(e, s, ep.activation, ep.params, self.vptr(e, node.inputs[0]), self.vptr(e, node.inputs[1]),
                       c, self.vptr(e, node.output))

    def _lrn(self, e: cg.Emitter, node: Node, k: NodeKernel) -> None:
        s = k.schedule
        shape = _static(node.inputs[0])
        cg.lrn_body(e, n=shape[0], c=shape[1], pixels=math.prod(shape[2:]), nhwc=self._layout(node.output) == NHWC,
                    size=s.size, alpha=s.alpha, beta=s.beta, bias=s.bias, lanes=self.isa.lanes,
                    x=self.vptr(e, node.inputs[0]), y=self.vptr(e, node.output))

    def _rows(self, e: cg.Emitter, node: Node, k: NodeKernel) -> None:
        s = k.schedule
        if s.inner > 1:  # softmax over an inner axis
            cg.softmax_strided_body(e, s.rows, s.length, s.inner, self.isa.lanes, self.vptr(e, node.inputs[0]),
                                    self.vptr(e, node.outputs[0]))
            return
        def operand(i: int, key: str):  # packed constant, or a computed value read in place
            v = node.inputs[i]
            return self.wptr(e, node, key) if v.const is not None else self.vptr(e, v)

        scale = operand(1, "scale") if s.kind == "layer_norm" else None
        bias = operand(2, "bias") if s.bias else None
        stats = [self.vptr(e, v) if v is not None and v.name in self.lw.plan.buffers else None
                 for v in list(node.outputs[1:3]) + [None] * (3 - len(node.outputs))]
        cg.rows_body(e, s.kind, s.rows, s.length, self.isa.lanes, self.vptr(e, node.inputs[0]),
                     self.vptr(e, node.outputs[0]), scale, bias, s.eps, mean_out=stats[0], inv_out=stats[1])

    def _transpose(self, e: cg.Emitter, node: Node, k: NodeKernel) -> None:
        cg.transpose_body(e, k.schedule.shape, k.schedule.perm, self.vptr(e, node.inputs[0]),
                          self.vptr(e, node.output))

    # -- the module --
    def build(self) -> tuple[ir.Module, list[str]]:
        """The module and the names of its segment functions, in order."""
        segs: list[str] = []
        order = {n.name: i for i, n in enumerate(self.lw.graph.nodes)}
        seg_fns = []
        for kind, nodes in self.lw.segments():
            if kind != "kernel":
                continue
            fn = ir.Function(self.module, SIG, name=f"seg{len(segs)}")
            e = cg.Emitter(self.module, fn, self.isa.fma, self.nt, fn.args[3])
            # Every node ends with a parallel region, which waits until all its items are done, so
            # the next node reads complete inputs.
            for node in nodes:
                e.b.call(self.node_fn(order[node.name], node), list(fn.args))
            e.finish()
            segs.append(fn.name)
            seg_fns.append(fn)
        run = ir.Function(self.module, SIG, name="run")
        b = ir.IRBuilder(run.append_basic_block("entry"))
        for fn in seg_fns:
            b.call(fn, list(run.args))
        b.ret_void()
        return self.module, segs


def _static(v: Value) -> tuple[int, ...]:
    return tuple(v.type.shape)


def _al(n: int) -> int:
    return -(-n // 64) * 64


def compile_object(lowered: LoweredGraph, host: Host, num_threads: int = 1) -> tuple[bytes, list[str]]:
    """Generate, optimize (O1 IR passes, codegen O3) and emit the object file of ``lowered``."""
    module, segs = ModuleBuilder(lowered, host, num_threads).build()
    STATS["codegen"] += 1
    mod = llvm.parse_assembly(str(module))
    mod.verify()
    tm = target_machine(host)
    pto = llvm.create_pipeline_tuning_options(speed_level=1)
    pb = llvm.create_pass_builder(tm, pto)
    pb.getModulePassManager().run(mod, pb)
    return tm.emit_object(mod), segs


_LOAD_LOCK = threading.Lock()


class LoadedObject:
    """An object file loaded into its own MCJIT engine; keep it alive while calling its functions."""

    def __init__(self, obj: bytes, host: Host, names: list[str]):
        with _LOAD_LOCK:
            tm = target_machine(host)
            empty = llvm.parse_assembly("")
            empty.triple = host.triple
            self.engine = llvm.create_mcjit_compiler(empty, tm)
            self.engine.add_object_file(llvm.ObjectFileRef.from_data(obj))
            self.engine.finalize_object()
            self.addresses = {n: self.engine.get_function_address(n) for n in names}
        STATS["loads"] += 1
