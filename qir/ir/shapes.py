"""Fixing a graph's symbolic input dims (``qirc convert --input-dim``, qnn-onnx-converter's flag).

:func:`bind_input_dims` gives inputs concrete shapes, substitutes the symbols that binding fixes
(``N`` = 1) in every other input too, and re-infers every node's output types in order, so that
shapes downstream become static wherever the ops' inference can compute them.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import attrs

from qir.errors import InputError, OptionError, ShapeInferenceError
from qir.ir.graph import Graph
from qir.ir.opdef import infer_types
from qir.ir.types import Dim, OptionalType, SequenceType, TensorType, Type


def bind_input_dims(graph: Graph, dims: Mapping[str, Sequence[Dim]]) -> Graph:
    """Give the named inputs the shapes ``dims`` and re-infer the graph's types (in place).

    A given dim must agree with a fixed dim of the input (a symbol may become any size);
    a symbol fixed by one input is fixed in every input that uses it. Returns ``graph``.
    """
    by_name = {v.name: v for v in graph.inputs}
    unknown = [name for name in dims if name not in by_name]
    if unknown:
        raise OptionError(f"--input-dim names no input of the model: {', '.join(unknown)}",
                          hint=f"the model's inputs are: {', '.join(by_name) or '(none)'}")
    symbols: dict[str, Dim] = {}
    for name, shape in dims.items():
        _match(by_name[name], tuple(shape), symbols)
    for value in graph.inputs:
        shape = tuple(dims[value.name]) if value.name in dims else None
        value.type = _substitute(value.type, symbols, shape)
    _reinfer(graph, symbols)
    return graph


def _match(value, shape: tuple[Dim, ...], symbols: dict[str, Dim]) -> None:
    """Check ``shape`` against the input's declared type, recording the symbols it fixes."""
    t = value.type
    if not isinstance(t, TensorType):
        raise OptionError(f"input {value.name!r} is a {type(t).__name__}, not a tensor: "
                          f"its dims cannot be set")
    if any(isinstance(d, int) and d < 0 for d in shape):
        raise OptionError(f"input {value.name!r}: dims must be non-negative, got {list(shape)}")
    if t.shape is None:
        return  # unknown rank: any shape may be given
    if len(shape) != len(t.shape):
        raise OptionError(f"input {value.name!r} has rank {len(t.shape)} (shape {_fmt(t.shape)}), "
                          f"but {len(shape)} dims were given: {_fmt(shape)}")
    mismatch = first_mismatch(t.shape, shape, symbols)
    if mismatch is not None:
        axis, old, earlier = mismatch
        new = shape[axis]
        if earlier is None:
            raise OptionError(f"input {value.name!r}: dim {axis} is fixed at {old} in the model, "
                              f"cannot set it to {new} (shape {_fmt(t.shape)})")
        raise OptionError(f"input {value.name!r}: dim {axis} ({old}) set to {new}, but "
                          f"{old} was already set to {earlier}")


def first_mismatch(declared: Sequence[Dim], shape: Sequence[Dim],
                   symbols: dict[str, Dim]) -> tuple[int, Dim, Dim | None] | None:
    """Match concrete ``shape`` against ``declared`` dims of the same rank, binding symbols in
    ``symbols`` (``?`` binds nothing). The first disagreement as (axis, declared dim, the
    symbol's earlier binding or None for a fixed dim), or None when they agree."""
    for axis, (want, got) in enumerate(zip(declared, shape)):
        if isinstance(want, int) and want != got:
            return axis, want, None
        if isinstance(want, str) and want != "?" and symbols.setdefault(want, got) != got:
            return axis, want, symbols[want]
    return None


def check_input_shape(name: str, declared: Sequence[Dim] | None, shape: Sequence[int],
                      symbols: dict[str, Dim], where: str = "") -> None:
    """Raise an InputError naming input ``name`` (after ``where``, e.g. a file and line) when a
    concrete ``shape`` does not fit the ``declared`` dims, binding symbols in ``symbols``."""
    if declared is None:
        return
    prefix = f"{where}: " if where else ""
    if len(shape) != len(declared):
        raise InputError(f"{prefix}input {name!r} must have rank {len(declared)} "
                         f"(shape {list(declared)}), got shape {list(shape)}")
    mismatch = first_mismatch(declared, shape, symbols)
    if mismatch is not None:
        axis, want, earlier = mismatch
        got = shape[axis]
        if earlier is None:
            raise InputError(f"{prefix}input {name!r}: dim {axis} must be {want}, got {got} "
                             f"(shape {list(shape)}, expected {list(declared)})")
        raise InputError(f"{prefix}input {name!r}: dim {axis} ({want}) is {got}, but "
                         f"another input bound {want} to {earlier}")


def _fmt(shape) -> str:
    return "[" + ",".join(str(d) for d in shape) + "]"


def _substitute(t: Type | None, symbols: Mapping[str, Dim], shape=None) -> Type | None:
    """``t`` with ``shape`` (if given) or its symbols replaced by their bound values."""
    if isinstance(t, TensorType):
        if shape is None:
            shape = None if t.shape is None else tuple(
                symbols.get(d, d) if isinstance(d, str) else d for d in t.shape)
        return attrs.evolve(t, shape=shape)
    if isinstance(t, (SequenceType, OptionalType)):
        return attrs.evolve(t, elem=_substitute(t.elem, symbols))
    return t


def _reinfer(graph: Graph, symbols: Mapping[str, Dim]) -> None:
    """Re-infer node output types in order, subgraphs before the node that holds them.

    Where the op's inference cannot tell a shape that the model itself declared (the importer
    refines qir's inference with ONNX's), the declared shape is kept, with bound symbols substituted.
    """
    for node in graph.nodes:
        for sub in node.subgraphs():
            for value in sub.inputs:
                value.type = _substitute(value.type, symbols)
            _reinfer(sub, symbols)
        try:
            types = infer_types(node, len(node.outputs))
        except ShapeInferenceError as exc:
            raise ShapeInferenceError(f"{exc.message} (after setting the input dims)",
                                      hint="check the --input-dim values against the model") from exc
        for i, value in enumerate(node.outputs):
            old = _substitute(value.type, symbols)
            new = types[i] if i < len(types) else None
            value.type = _merge(old, new)


def _merge(old: Type | None, new: Type | None) -> Type | None:
    """The re-inferred type, falling back to the declared shape where inference gives none."""
    if new is None:
        return old
    if isinstance(new, TensorType) and isinstance(old, TensorType):
        shape = new.shape if new.shape is not None else old.shape
        if new.shape is not None and old.shape is not None and len(new.shape) == len(old.shape):
            # Per dim, a known size beats a symbol inference could not resolve.
            shape = tuple(o if isinstance(n, str) and isinstance(o, int) else n
                          for n, o in zip(new.shape, old.shape))
        return attrs.evolve(new, shape=shape, quant=new.quant or old.quant)
    return new
