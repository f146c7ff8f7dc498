"""Matrix ATen ops: mm, bmm, matmul, addmm, linear, baddbmm, einsum."""

from __future__ import annotations

from qir.frontends.torch.registry import aten


@aten("mm", "bmm", "matmul", "mv", "dot")
def matmul(ctx):
    dt = ctx.out_dtype
    return ctx.emit("linalg.matmul", [ctx.value(ctx.args["self"], dt), ctx.value(ctx.args[_second(ctx)], dt)])


def _second(ctx) -> str:
    return next(k for k in ("mat2", "other", "vec", "tensor") if k in ctx.args)


@aten("addmm")
def addmm(ctx):
    """beta·self + alpha·(mat1 @ mat2): one gemm."""
    a = ctx.args
    dt = ctx.out_dtype
    return ctx.emit("linalg.gemm", [ctx.value(a["mat1"], dt), ctx.value(a["mat2"], dt), ctx.value(a["self"], dt)],
                    {"alpha": float(a.get("alpha", 1)), "beta": float(a.get("beta", 1))})


@aten("linear")
def linear(ctx):
    """x @ weightᵀ + bias: a gemm for 2-D x, else a matmul by the transposed weight."""
    a = ctx.args
    x, w = ctx.value(a["input"]), ctx.value(a["weight"])
    b = None if a.get("bias") is None else ctx.value(a["bias"])
    if ctx.rank(a["input"]) == 2:
        return ctx.emit("linalg.gemm", [x, w, b], {"transB": 1})
    wt = ctx.emit("tensor.transpose", [w], {"perm": (1, 0)}) if ctx.rank(a["weight"]) == 2 else w
    y = ctx.emit("linalg.matmul", [x, wt])
    return y if b is None else ctx.emit("elementwise.add", [y, b])


@aten("baddbmm")
def baddbmm(ctx):
    a = ctx.args
    dt = ctx.out_dtype
    y = ctx.emit("linalg.matmul", [ctx.value(a["batch1"], dt), ctx.value(a["batch2"], dt)])
    if float(a.get("alpha", 1)) != 1:
        y = ctx.emit("elementwise.mul", [y, ctx.value(float(a["alpha"]))])
    if float(a.get("beta", 1)) == 0:
        return y
    c = ctx.value(a["self"], dt)
    if float(a.get("beta", 1)) != 1:
        c = ctx.emit("elementwise.mul", [c, ctx.value(float(a["beta"]))])
    return ctx.emit("elementwise.add", [y, c])


@aten("einsum")
def einsum(ctx):
    dt = ctx.out_dtype
    return ctx.emit("linalg.einsum", [ctx.value(t, dt) for t in ctx.args["tensors"]],
                    {"equation": ctx.args["equation"].replace(" ", "")})
