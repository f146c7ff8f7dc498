"""The fused family: compound ops that fusion passes build, each with a reference kernel AND a
decomposition into standard ops.

- ``fused.conv(x, w, b?, residual?)``: ``act(conv(x, w, b) + residual)``, the conv attributes of
  ``nn.conv`` plus the epilogue ``activation`` / ``activation_params``.
- ``fused.gemm(A, B, C?)``: ``act(gemm(A, B, C))``, the attributes of ``linalg.gemm`` plus the
  epilogue.

Epilogue activations (``activation``): ``none``, ``relu``, ``leaky_relu`` (params: alpha),
``sigmoid``, ``tanh``, ``hard_sigmoid`` (alpha, beta), ``hard_swish``, ``clip`` (min, max; ±inf
for an open side). ``ACTIVATIONS`` lists them; ``activation_of(node)`` recognizes a standard
activation node as one of them.

**Decompositions.** Every op here declares ``decompose(node, graph) -> list[Value]`` on its
OpDef (``get_op(name).decompose``): it adds the equivalent standard ops before ``node`` in
``graph``, carrying ``node``'s provenance, and returns one Value per output. ``expand_node(node)``
applies it (replacing the outputs, keeping graph output names, erasing the node) and
``expand_all(graph, should_expand)`` does so for every matching node of a graph tree: the ONNX
exporter uses it for ops that have no ONNX equivalent, and a target lacking a fused op can too.

The kernels are compositions of the standard ops' own kernels, so a fused node computes the very
same numbers as the nodes it replaced.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import attrs
import numpy as np

from qir.errors import QirError
from qir.ir.opdef import Attr, InferContext, get_op, op
from qir.ir.ops.infer import broadcast_shapes

# -- epilogue activations ------------------------------------------------------------------


@attrs.frozen
class Activation:
    """One epilogue activation: the standard op it stands for and its float params.

    ``params`` name the op's float attributes in order, or for ``clip`` its (min, max) inputs.
    """

    op: str
    params: tuple[str, ...] = ()
    defaults: tuple[float, ...] = ()
    params_are_inputs: bool = False


ACTIVATIONS: dict[str, Activation | None] = {
    "none": None,
    "relu": Activation("nn.relu"),
    "leaky_relu": Activation("nn.leaky_relu", ("alpha",), (0.01,)),
    "sigmoid": Activation("nn.sigmoid"),
    "tanh": Activation("nn.tanh"),
    "hard_sigmoid": Activation("nn.hard_sigmoid", ("alpha", "beta"), (0.2, 0.5)),
    "hard_swish": Activation("nn.hard_swish"),
    "clip": Activation("elementwise.clip", ("min", "max"), (-np.inf, np.inf), params_are_inputs=True),
}
_BY_OP = {a.op: name for name, a in ACTIVATIONS.items() if a is not None}


def _spec(name: str) -> Activation | None:
    if name not in ACTIVATIONS:
        raise ValueError(f"unknown epilogue activation {name!r}; known: {', '.join(ACTIVATIONS)}")
    return ACTIVATIONS[name]


def _params(name: str, params: Sequence[float]) -> tuple[float, ...]:
    spec = _spec(name)
    if spec is None:
        return ()
    given = tuple(float(p) for p in params)
    if len(given) > len(spec.params):
        raise ValueError(f"activation {name!r} takes {len(spec.params)} params, got {len(given)}")
    return given + spec.defaults[len(given):]


def activation_of(node) -> tuple[str, tuple[float, ...]] | None:
    """``(activation, params)`` when ``node`` is a standard activation an epilogue can absorb.

    Clip qualifies only with constant scalar (or omitted) bounds.
    """
    name = _BY_OP.get(node.op)
    if name is None:
        return None
    spec = ACTIVATIONS[name]
    if spec.params_are_inputs:
        params = []
        for i, default in enumerate(spec.defaults, start=1):
            v = node.inputs[i] if i < len(node.inputs) else None
            if v is None:
                params.append(default)
            elif v.const is None or v.const.size > 1:
                return None
            else:
                params.append(float(v.const.reshape(-1)[0]) if v.const.size else default)
        return name, tuple(params)
    resolved = get_op(node.op).resolve_attrs(node.attrs)
    return name, tuple(float(resolved[p]) for p in spec.params)


def apply_activation(y: np.ndarray, name: str, params: Sequence[float]) -> np.ndarray:
    """``y`` through the epilogue activation, by the standard op's own kernel."""
    spec = _spec(name)
    if spec is None:
        return y
    values = _params(name, params)
    kernel = get_op(spec.op).kernel
    if spec.params_are_inputs:
        return kernel(y, *(np.asarray(v, dtype=y.dtype) for v in values))
    return kernel(y, **dict(zip(spec.params, values)))


def build_activation(graph, before, y, name: str, params: Sequence[float], provenance, base: str):
    """Add the standard node(s) of an epilogue activation on ``y`` before ``before``; the result."""
    spec = _spec(name)
    if spec is None:
        return y
    values = _params(name, params)
    if spec.params_are_inputs:
        dtype = y.type.dtype.numpy
        bounds = [graph.add_constant(np.asarray(v, dtype=dtype), name=f"{base}_{p}")
                  for p, v in zip(spec.params, values)]
        node = graph.add_node(spec.op, [y, *bounds], name=base, provenance=provenance, before=before)
    else:
        node = graph.add_node(spec.op, [y], dict(zip(spec.params, values)), name=base,
                              provenance=provenance, before=before)
    return node.output


def _check_activation(ctx: InferContext) -> None:
    try:
        _params(ctx.attrs["activation"], ctx.attrs["activation_params"])
    except ValueError as exc:
        raise ctx.fail(str(exc)) from None


_EPILOGUE_ATTRS = {
    "activation": Attr("str", "none", "epilogue activation: " + ", ".join(ACTIVATIONS)),
    "activation_params": Attr("floats", (), "the activation's float params (clip: min, max)"),
}


def _subset(attrs_: dict[str, Any], opname: str) -> dict[str, Any]:
    """The attributes of ``attrs_`` that op ``opname`` takes."""
    keys = get_op(opname).attrs
    return {k: v for k, v in attrs_.items() if k in keys}


# -- fused.conv ----------------------------------------------------------------------------

def _conv_fused_infer(ctx: InferContext):
    _check_activation(ctx)
    (out,) = get_op("nn.conv").infer(ctx)
    if ctx.has(3) and out.shape is not None and ctx.shape(3) is not None:
        if len(ctx.shape(3)) > len(out.shape) or broadcast_shapes(out.shape, ctx.shape(3)) != tuple(out.shape):
            raise ctx.fail(f"residual of shape {ctx.shape(3)} does not broadcast to the conv output "
                           f"{tuple(out.shape)}")
    return [out]


def _decompose_conv(node, graph) -> list:
    a = get_op(node.op).resolve_attrs(node.attrs)
    x, w, b, residual = (list(node.inputs) + [None] * 4)[:4]
    prov = node.provenance
    conv = graph.add_node("nn.conv", [x, w] + ([b] if b is not None else []), _subset(a, "nn.conv"),
                          name=f"{node.name}_conv", provenance=prov, before=node)
    y = conv.output
    if residual is not None:
        y = graph.add_node("elementwise.add", [y, residual], name=f"{node.name}_add",
                           provenance=prov, before=node).output
    return [build_activation(graph, node, y, a["activation"], a["activation_params"], prov,
                             f"{node.name}_{a['activation']}")]


_CONV_ATTRS = {k: v for k, v in get_op("nn.conv").attrs.items()}


@op("fused.conv", inputs=["x", "w", "b?", "residual?"], outputs=["y"],
    attrs={**_CONV_ATTRS, **_EPILOGUE_ATTRS}, infer=_conv_fused_infer, decompose=_decompose_conv)
def conv(x, w, b=None, residual=None, *, activation, activation_params, **conv_attrs):
    """activation(conv(x, w, b) + residual): a convolution with its epilogue (bias, residual add,
    activation) in one op. The residual broadcasts to the conv output, never widening it."""
    y = get_op("nn.conv").kernel(x, w, b, **conv_attrs)
    if residual is not None:
        y = get_op("elementwise.add").kernel(y, residual)
    return apply_activation(y, activation, activation_params)


# -- fused.gemm ----------------------------------------------------------------------------

def _gemm_fused_infer(ctx: InferContext):
    _check_activation(ctx)
    return get_op("linalg.gemm").infer(ctx)


def _decompose_gemm(node, graph) -> list:
    a = get_op(node.op).resolve_attrs(node.attrs)
    prov = node.provenance
    gemm = graph.add_node("linalg.gemm", list(node.inputs), _subset(a, "linalg.gemm"),
                          name=f"{node.name}_gemm", provenance=prov, before=node)
    return [build_activation(graph, node, gemm.output, a["activation"], a["activation_params"], prov,
                             f"{node.name}_{a['activation']}")]


@op("fused.gemm", inputs=["A", "B", "C?"], outputs=["Y"],
    attrs={**get_op("linalg.gemm").attrs, **_EPILOGUE_ATTRS}, infer=_gemm_fused_infer,
    decompose=_decompose_gemm)
def gemm(a, b, c=None, *, activation, activation_params, **gemm_attrs):
    """activation(alpha·A'·B' + beta·C): a Gemm with an activation epilogue."""
    y = get_op("linalg.gemm").kernel(a, b, c, **gemm_attrs)
    return apply_activation(y, activation, activation_params)


# -- expanding decompositions --------------------------------------------------------------

def expand_node(node) -> list:
    """Replace ``node`` by its op's decomposition; returns the Values now standing for its outputs.

    A graph output keeps its name (the replacement is renamed, or an identity carries the name
    when the replacement already is another named value).
    """
    opdef = get_op(node.op)
    if opdef.decompose is None:
        raise QirError(f"node {node.name} ({node.op}): the op has no decomposition")
    graph = node.graph
    new = opdef.decompose(node, graph)
    if len(new) < len(node.outputs):
        raise QirError(f"node {node.name} ({node.op}): its decomposition gave {len(new)} values "
                       f"for {len(node.outputs)} outputs")
    for old, value in zip(node.outputs, new):
        _replace_keeping_name(graph, node, old, value)
    graph.erase_node(node)
    return list(new[:len(node.outputs)])


def _replace_keeping_name(graph, node, old, new) -> None:
    is_output = any(old is v for g in graph.root._graph_tree() for v in g.outputs)
    if is_output and (new.producer is None or new.graph is not graph
                      or any(new is v for g in graph.root._graph_tree() for v in g.outputs)):
        # ``new`` already has a name of its own (input, constant, another output): an identity
        # carries the old one.
        new = graph.add_node("tensor.identity", [new], name=f"{node.name}_out",
                             provenance=node.provenance, before=node).output
    graph.replace_all_uses(old, new)
    if is_output:
        name = old.name
        graph.rename(old, f"{name}_replaced")
        graph.rename(new, name)


def expand_all(graph, should_expand: Callable[[Any], bool], max_depth: int = 8) -> int:
    """Expand every node of ``graph``'s tree for which ``should_expand(node)`` holds, again on
    what the decompositions produce (up to ``max_depth`` rounds); returns how many were expanded."""
    count = 0
    for _ in range(max_depth):
        todo = [n for n in graph.walk() if should_expand(n)]
        if not todo:
            return count
        for node in todo:
            expand_node(node)
        count += len(todo)
    left = sorted({n.op for n in graph.walk() if should_expand(n)})
    if left:
        raise QirError(f"graph @{graph.name}: decompositions of {', '.join(left)} did not terminate "
                       f"after {max_depth} rounds")
    return count
