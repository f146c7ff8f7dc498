"""Shared type-inference helpers for op definitions."""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

from qir.ir.opdef import InferContext
from qir.ir.types import Dim, DType, TensorType, Type


def same_as(i: int = 0, n: int = 1) -> Callable[[InferContext], list[Type]]:
    """Every output has the type of input ``i`` (without its quantization)."""

    def infer(ctx: InferContext) -> list[Type]:
        t = ctx.type(i)
        return [TensorType(t.dtype, t.shape) if isinstance(t, TensorType) else t] * n

    return infer


def with_dtype(dtype: DType, shape_of: int | None = 0) -> Callable[[InferContext], list[Type]]:
    """One output of ``dtype``, shaped like input ``shape_of`` (unknown shape when None)."""

    def infer(ctx: InferContext) -> list[Type]:
        return [TensorType(dtype, None if shape_of is None else ctx.shape(shape_of))]

    return infer


def broadcast_shapes(*shapes) -> tuple[Dim, ...] | None:
    """Numpy-style broadcast of shapes whose dims may be symbols; None if any is unknown."""
    if any(s is None for s in shapes):
        return None
    rank = max((len(s) for s in shapes), default=0)
    out: list[Dim] = []
    for axis in range(rank):
        dims = [s[len(s) - rank + axis] for s in shapes if len(s) - rank + axis >= 0]
        known = {d for d in dims if d != 1}
        if not known:
            out.append(1)
        elif len(known) == 1:
            out.append(known.pop())
        else:
            ints = {d for d in known if isinstance(d, int)}
            if len(ints) > 1:
                raise ValueError(f"shapes {list(shapes)} do not broadcast")
            # A symbol beside an int: the int wins (the symbol must be 1 or equal to it).
            out.append(ints.pop() if ints else sorted(known, key=str)[0])
    return tuple(out)


def broadcast(dtype_from: int = 0, dtype: DType | None = None) -> Callable[[InferContext], list[Type]]:
    """One output with the broadcast shape of all present inputs."""

    def infer(ctx: InferContext) -> list[Type]:
        shapes = [ctx.shape(i) for i in range(len(ctx)) if ctx.has(i)]
        return [TensorType(dtype or ctx.dtype(dtype_from), broadcast_shapes(*shapes))]

    return infer


def unknown_shape(dtype_from: int = 0, n: int = 1) -> Callable[[InferContext], list[Type]]:
    """Outputs of input ``dtype_from``'s dtype whose shapes depend on data."""

    def infer(ctx: InferContext) -> list[Type]:
        return [TensorType(ctx.dtype(dtype_from), None)] * n

    return infer


def normalize_axis(axis: int, rank: int) -> int:
    if not -rank <= axis < max(rank, 1):
        raise ValueError(f"axis {axis} is out of range for rank {rank}")
    return axis % rank if rank else 0


def const_ints(ctx: InferContext, i: int) -> list[int] | None:
    """Input ``i`` as a list of ints when it is a constant, else None."""
    value = ctx.const(i)
    return None if value is None else [int(v) for v in np.asarray(value).reshape(-1)]


def from_kernel(ctx: InferContext, kernel: Callable, n: int = 1) -> list[Type] | None:
    """Types found by running the kernel when every input is a constant (shape ops), else None."""
    if not all(ctx.const(i) is not None for i in range(len(ctx)) if ctx.has(i)):
        return None
    outs = kernel(*[ctx.const(i) for i in range(len(ctx))], **ctx.attrs)
    outs = outs if isinstance(outs, tuple) else (outs,)
    return [TensorType(DType.from_numpy(np.asarray(o).dtype), np.shape(o)) for o in outs[:n]]


def fixed(*dtypes: DType) -> Callable[[InferContext], list[Type]]:
    """Outputs of fixed dtypes and unknown shapes."""

    def infer(ctx: InferContext) -> list[Type]:
        return [TensorType(d, None) for d in dtypes]

    return infer


def shaped(dtype: DType, shape: Sequence[Dim] | None) -> TensorType:
    return TensorType(dtype, None if shape is None else tuple(shape))
