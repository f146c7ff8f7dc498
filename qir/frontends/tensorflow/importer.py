"""A shape-inferred TensorFlow graph (frozen: variables are constants) → qir Graph.

The loader (loader.py) turns every model kind into one ``tf.Graph`` plus the signature's inputs
and outputs. Here the operations the outputs depend on are visited in topological order (ops
reached only through control edges, e.g. the NoOps of variable reads, are dropped); every op type
is checked against the converter registry first, so that all unsupported ops are reported in one
error; then each op is converted. Const ops become constant Values, pass-through ops (Identity,
StopGradient...) map their output to their input, everything else goes through its converter.

Converters fold at import time: a qir node whose inputs are all constants is evaluated with the
op's own reference kernel (as TF's grappler would), so that Shape → StridedSlice → Pack chains of
static shapes arrive as constants where ops need them (reshape targets, pads, axes).
"""

from __future__ import annotations

import collections
import re
from typing import Any, Sequence

import numpy as np

from qir.errors import ModelLoadError, QirError, UnsupportedOpError
from qir.frontends.tensorflow.registry import CALLS, CONTROL_FLOW, PASSTHROUGH, lookup
from qir.ir.graph import Graph, Value
from qir.ir.opdef import call_kernel, conform, get_op
from qir.ir.types import DType, TensorType

_MISSING = object()
#: Results larger than this (elements) are not folded at import time (a Tile or Fill of a large
#: shape would bloat the graph); fold-constants can still decide later.
FOLD_LIMIT = 1 << 22


def tf_dtype(dtype, where: str) -> DType:
    """The qir DType of a ``tf.DType``."""
    try:
        return DType.from_numpy(dtype.as_numpy_dtype)
    except Exception:
        raise UnsupportedOpError(f"{where}: TensorFlow dtype {dtype.name} is not supported") from None


def tf_shape(shape) -> tuple | None:
    """A TensorShape as a tuple of ints/None (None when the rank is unknown)."""
    return None if shape.rank is None else tuple(shape.as_list())


class Context:
    """What a converter sees of one TF operation, and how it adds qir nodes."""

    def __init__(self, importer: "Importer", op):
        self.importer = importer
        self.op = op
        self.graph: Graph = importer.graph
        self.type: str = op.type
        self.name: str = importer.prefix + op.name
        self.inputs: list[Value] = [importer.value_of(t, op.name) for t in op.inputs]
        #: the nodes this op became (their outputs that are TF outputs get TF's tensor names)
        self.created: list = []

    # -- reading the TF op ---------------------------------------------------------------------
    def attr(self, name: str, default: Any = _MISSING) -> Any:
        """The TF attribute ``name`` (bytes decoded to str); ``default`` when the op lacks it."""
        try:
            value = self.op.get_attr(name)
        except ValueError:
            if default is _MISSING:
                raise self.fail(f"has no attribute {name!r}") from None
            return default
        if isinstance(value, bytes):
            return value.decode("utf-8", "replace")
        if isinstance(value, list):
            return [v.decode("utf-8", "replace") if isinstance(v, bytes) else v for v in value]
        return value

    def const(self, i: int) -> np.ndarray | None:
        """Input ``i``'s value when it is a constant (after import-time folding), else None."""
        return self.inputs[i].const if i < len(self.inputs) else None

    def need_const(self, i: int, what: str) -> np.ndarray:
        value = self.const(i)
        if value is None:
            raise self.fail(f"its {what} (input {i}) must be a constant (or computable from "
                            f"static shapes); it is computed at run time here",
                            hint="give static input shapes (input_shapes=...) so that it folds")
        return value

    def in_shape(self, i: int) -> tuple | None:
        """TF's static shape of input ``i`` (ints and None), None when the rank is unknown."""
        return tf_shape(self.op.inputs[i].shape)

    def out_shape(self, i: int = 0) -> tuple | None:
        return tf_shape(self.op.outputs[i].shape)

    def in_dtype(self, i: int) -> DType:
        return tf_dtype(self.op.inputs[i].dtype, f"node {self.name}")

    def out_dtype(self, i: int = 0) -> DType:
        return tf_dtype(self.op.outputs[i].dtype, f"node {self.name}")

    def dtype_attr(self, name: str) -> DType:
        return tf_dtype(self.attr(name), f"node {self.name}")

    # -- building ------------------------------------------------------------------------------
    def emit(self, op: str, inputs: Sequence[Value | None], attrs: dict | None = None,
             num_outputs: int = 1) -> Any:
        """Add a qir node (provenance: this TF op); returns its output (a list if several).
        A node whose inputs are all constants is evaluated now and becomes constants."""
        node = self.graph.add_node(op, list(inputs), attrs or {}, name=f"{self.name}/{op.rsplit('.', 1)[-1]}",
                                   num_outputs=num_outputs, provenance=(self.name,))
        self.created.append(node)
        outs = list(node.outputs)
        if self.importer.fold and _foldable(node):
            outs = self._fold(node)
        return outs[0] if num_outputs == 1 else outs

    def _fold(self, node) -> list[Value]:
        opdef = get_op(node.op)
        results = call_kernel(opdef, node, [None if v is None else v.const for v in node.inputs])
        values = [self.constant(conform(out, r)) for out, r in zip(node.outputs, results)]
        self.graph.erase_node(node)
        return values

    def constant(self, array, dtype=None) -> Value:
        """A new constant Value named after this op."""
        array = np.array(array, dtype=dtype, order="C")  # (ascontiguousarray would make 0-d 1-d)
        return self.graph.add_constant(array, f"{self.name}/const")

    def ints(self, values) -> Value:
        """An int64 constant (axes, perms, pads, shapes)."""
        return self.constant(np.asarray(values, dtype=np.int64).reshape(np.shape(values)))

    def int64(self, value: Value) -> Value:
        """``value`` as int64 (TF shape/index tensors are often int32; qir's take int64)."""
        t = value.type
        if isinstance(t, TensorType) and t.dtype == DType.INT64:
            return value
        return self.emit("elementwise.cast", [value], {"to": DType.INT64, "saturate": 1, "round_mode": "up"})

    def scalar(self, x, like: Value) -> Value:
        """A scalar constant of ``like``'s dtype."""
        return self.constant(np.asarray(x, dtype=like.type.dtype.numpy))

    def transpose(self, x: Value, perm: Sequence[int]) -> Value:
        return self.emit("tensor.transpose", [x], {"perm": [int(p) for p in perm]})

    def fail(self, message: str, hint: str | None = None) -> QirError:
        return UnsupportedOpError(f"{self.importer.where}: node {self.name} ({self.type}): {message}", hint=hint)


def _foldable(node) -> bool:
    if not node.inputs or any(v is not None and v.const is None for v in node.inputs):
        return False
    if all(v is None for v in node.inputs) or get_op(node.op).needs_runner or node.subgraphs():
        return False
    for out in node.outputs:
        t = out.type
        if not isinstance(t, TensorType) or t.shape is None or not all(isinstance(d, int) for d in t.shape):
            return False
        if int(np.prod(t.shape, dtype=np.int64)) > FOLD_LIMIT:
            return False
    return True


class Importer:
    """Converts the ops of ``tf_graph`` that ``outputs`` depend on into a qir Graph.

    Function calls (PartitionedCall / StatefulPartitionedCall, e.g. the jit-compiled functions
    Keras uses for grouped convolutions, which freezing does not inline) are inlined: the callee's
    body is converted by a nested Importer into the same qir Graph, its node names prefixed with
    the call's name.
    """

    def __init__(self, tf_graph, inputs: list[tuple[str, Any]], outputs: list[tuple[str, Any]],
                 where: str, name: str = "main", fold: bool = True, *, graph: Graph | None = None,
                 prefix: str = "", library: dict | None = None):
        self.tf_graph = tf_graph
        self.inputs = inputs      # (qir name, tf.Tensor of a Placeholder)
        self.outputs = outputs    # (qir name, tf.Tensor)
        self.where = where
        self.fold = fold
        self.graph = graph if graph is not None else Graph(name)
        self.prefix = prefix
        self.values: dict[str, Value] = {}
        self._library = library
        self._callees: dict[str, Any] = {}
        self._reserved: set[str] = set()

    def value_of(self, tensor, reader: str) -> Value:
        try:
            return self.values[tensor.name]
        except KeyError:
            raise ModelLoadError(f"{self.where}: node {reader}: input {tensor.name} was not converted "
                                 f"(its producer is not in the graph)") from None

    # -- driver --------------------------------------------------------------------------------
    def run(self) -> Graph:
        ops = self._ops_in_order()
        bound = {t.op.name for _, t in self.inputs}
        missing: dict[str, list[str]] = collections.OrderedDict()
        self._collect_missing(ops, bound, missing)
        self._report(missing)
        for name, tensor in self.inputs:
            self.values[tensor.name] = self.graph.add_input(name, self._input_type(name, tensor))
        # outputs keep the signature's names: no converter may take them
        self._reserved = {name for name, _ in self.outputs} - self.graph._names
        self.graph._names.update(self._reserved)
        self._convert_ops(ops)
        self._set_outputs()
        self._drop_dead_nodes()
        self._drop_unused_constants()
        return self.graph

    def _drop_dead_nodes(self) -> None:
        """Nodes no output depends on (shape arithmetic a converter made redundant)."""
        outputs = {id(v) for v in self.graph.outputs}
        for node in reversed(list(self.graph.nodes)):
            if all(not v.uses and id(v) not in outputs for v in node.outputs):
                self.graph.erase_node(node)

    def _convert_ops(self, ops) -> None:
        for op in ops:
            if op.outputs and all(t.name in self.values for t in op.outputs):
                continue  # a bound input
            self._convert(op)

    def _drop_unused_constants(self) -> None:
        """Constants that folding or pass-through left without readers (e.g. the int32 copies
        of shapes that were cast to int64)."""
        outputs = {id(v) for v in self.graph.outputs}
        for value in list(self.graph.constants.values()):
            if not value.uses and id(value) not in outputs:
                self.graph.erase_constant(value)

    def _ops_in_order(self) -> list:
        """The ops the outputs depend on through data edges, producers first."""
        order, state = [], {}
        stack = [(t.op, False) for _, t in reversed(self.outputs)]
        while stack:
            op, done = stack.pop()
            if done:
                if state.get(op.name) != 2:
                    state[op.name] = 2
                    order.append(op)
                continue
            if state.get(op.name):
                continue  # visited, or on the stack (TF v1 loops have cycles through NextIteration)
            state[op.name] = 1
            stack.append((op, True))
            stack.extend((t.op, False) for t in reversed(list(op.inputs)) if not state.get(t.op.name))
        return order

    # -- function calls ------------------------------------------------------------------------
    def _callee(self, op):
        """The body of a call op as a shape-inferred FuncGraph (cached), or None if absent."""
        if op.name not in self._callees:
            from tensorflow.python.framework.function_def_to_graph import function_def_to_graph

            if self._library is None:
                self._library = {f.signature.name: f for f in self.tf_graph.as_graph_def().library.function}
            fdef = self._library.get(op.get_attr("f").name)
            self._callees[op.name] = None if fdef is None else function_def_to_graph(
                fdef, input_shapes=[t.shape for t in op.inputs])
        return self._callees[op.name]

    def _nested(self, op, body) -> "Importer":
        return Importer(body, [], [(t.name, t) for t in body.outputs], self.where, fold=self.fold,
                        graph=self.graph, prefix=f"{self.prefix}{op.name}/", library=self._library)

    def _inline(self, ctx) -> list[Value]:
        body = self._callee(ctx.op)
        nested = self._nested(ctx.op, body)
        for placeholder, value in zip(body.inputs, ctx.inputs):
            nested.values[placeholder.name] = value
        nested._convert_ops(nested._ops_in_order())
        return [nested.value_of(t, ctx.name) for t in body.outputs]

    # -- checking ------------------------------------------------------------------------------
    def _collect_missing(self, ops, bound: set[str], missing: dict) -> None:
        for op in ops:
            name = self.prefix + op.name
            if op.name in bound or op.type == "Const" or op.type in PASSTHROUGH:
                continue
            if op.type in CALLS:
                body = self._callee(op)
                if body is None:
                    missing.setdefault(op.type, []).append(name)
                else:
                    nested = self._nested(op, body)
                    nested._collect_missing(nested._ops_in_order(), {t.op.name for t in body.inputs}, missing)
                continue
            if op.type in CONTROL_FLOW or lookup(op.type) is None or op.type == "Placeholder":
                missing.setdefault(op.type, []).append(name)

    def _report(self, missing: dict) -> None:
        if not missing:
            return
        lines = [f"  {t} ×{len(names)} (e.g. {', '.join(names[:3])})" for t, names in missing.items()]
        flow = sorted(t for t in missing if t in CONTROL_FLOW)
        message = f"{self.where}: {len(missing)} unsupported TensorFlow op type(s):\n" + "\n".join(lines)
        if flow:
            message += (f"\n  {', '.join(flow)}: data-dependent control flow (tf.cond / tf.while_loop) "
                        f"cannot be expressed by the TensorFlow frontend")
        if "Placeholder" in missing:
            message += "\n  Placeholder: a placeholder that is not an input of the signature"
        if any(t in CALLS for t in missing):
            message += "\n  a function call whose body is not in the graph's function library"
        hint = ("these ops have no qir converter yet; please file an issue with this list"
                + ("; for control flow: unroll loops with a static trip count in Python, or use "
                   "tf.where instead of tf.cond" if flow else ""))
        raise UnsupportedOpError(message, hint=hint)

    def _input_type(self, name: str, tensor) -> TensorType:
        dtype = tf_dtype(tensor.dtype, f"input {name}")
        shape = tf_shape(tensor.shape)
        if shape is not None:
            # Unknown dims become symbols bound at run time: the batch dim is "N" for every input.
            symbol = re.sub(r"\W", "_", name)
            shape = tuple(d if d is not None else ("N" if i == 0 else f"{symbol}_d{i}")
                          for i, d in enumerate(shape))
        return TensorType(dtype, shape)

    def _convert(self, op) -> None:
        if op.type == "Const":
            import tensorflow as tf

            array = tf.make_ndarray(op.get_attr("value"))
            if array.dtype.kind in "SO":
                array = np.array([s.decode("utf-8", "replace") if isinstance(s, bytes) else s
                                  for s in array.reshape(-1)], dtype=object).reshape(array.shape)
            self.values[op.outputs[0].name] = self.graph.add_constant(array, self.prefix + op.name)
            return
        ctx = Context(self, op)
        if op.type in CALLS:
            self._bind(ctx, self._inline(ctx))
            return
        if op.type in PASSTHROUGH:
            if not ctx.inputs:
                raise ModelLoadError(f"{self.where}: node {op.name} ({op.type}) has no input")
            for out in op.outputs:
                self.values[out.name] = ctx.inputs[0]
            return
        try:
            result = lookup(op.type)(ctx)
        except QirError:
            raise
        except Exception as exc:
            raise ModelLoadError(f"{self.where}: node {op.name} ({op.type}) cannot be converted: "
                                 f"{type(exc).__name__}: {exc}") from exc
        self._bind(ctx, result if isinstance(result, (list, tuple)) else [result])

    def _bind(self, ctx, results) -> None:
        """Map the op's TF outputs to the converter's Values (typed, named after TF's tensors)."""
        op = ctx.op
        for i, out in enumerate(op.outputs):
            value = results[i] if i < len(results) else None
            if value is None:
                if out.consumers() or any(t.name == out.name for _, t in self.outputs):
                    raise ctx.fail(f"output {i} is used, but qir does not compute it")
                continue
            self._refine(value, out, op)
            if value.producer is not None and any(value.producer is n for n in ctx.created) \
                    and value.name.startswith(f"{ctx.name}/"):
                self.graph.rename(value, ctx.name if i == 0 else f"{ctx.name}_{i}")
            self.values[out.name] = value

    def _refine(self, value: Value, tensor, op) -> None:
        """Check qir's inferred type against TF's static one; fill dims qir leaves unknown."""
        t = value.type
        if not isinstance(t, TensorType):
            return
        expected = tf_dtype(tensor.dtype, f"node {op.name}")
        if t.dtype != expected:
            raise ModelLoadError(f"{self.where}: node {op.name} ({op.type}): qir computes {t.dtype.value} "
                                 f"where TensorFlow has {expected.value} (a converter bug; please report it)")
        shape = tf_shape(tensor.shape)
        if shape is None:
            return
        if t.shape is None:
            if value.producer is not None and all(d is not None for d in shape):
                value.type = t.with_shape(shape)
            return
        if len(t.shape) != len(shape) or any(isinstance(a, int) and b is not None and a != b
                                              for a, b in zip(t.shape, shape)):
            raise ModelLoadError(f"{self.where}: node {op.name} ({op.type}): qir infers shape "
                                 f"{list(t.shape)} where TensorFlow has {list(shape)} "
                                 f"(a converter bug; please report it)")
        if value.producer is not None:
            dims = tuple(b if (not isinstance(a, int) and b is not None and a == "?") else a
                         for a, b in zip(t.shape, shape))
            value.type = t.with_shape(dims)

    def _set_outputs(self) -> None:
        graph, seen = self.graph, set()
        for name, tensor in self.outputs:
            value = self.value_of(tensor, f"graph output {name}")
            if name in self._reserved:
                self._reserved.discard(name)
                graph._names.discard(name)
            if value.producer is None or id(value) in seen or value.graph is not graph:
                node = graph.add_node("tensor.identity", [value], name=graph.unique_name(f"{name}_identity"),
                                      output_names=[name], provenance=(tensor.op.name,))
                value = node.output
            elif value.name != name:
                graph.rename(value, name)
            seen.add(id(value))
            graph.outputs.append(value)
