"""ONNX ModelProto → qir Graph.

Reads files (with external data kept inside the model's folder), bytes or ModelProtos; checks
that every op has a converter before converting anything, so all unsupported ops are reported in
one error; converts nodes through the converter registry; types every value with qir's own
inference, refined by ONNX's shape inference where qir's leaves a shape unknown.
"""

from __future__ import annotations

import collections
import os
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import onnx
from onnx import numpy_helper

from qir.errors import ModelLoadError, QirError, UnsupportedOpError
from qir.frontends.onnx.dtypes import to_dtype
from qir.frontends.onnx.registry import canonical_domain, lookup
from qir.ir.graph import Graph, Value
from qir.ir.types import DType, OptionalType, SequenceType, TensorType, Type

ModelLike = "str | os.PathLike | bytes | onnx.ModelProto"


# -- reading -------------------------------------------------------------------------------

def read_model(model: Any) -> tuple[onnx.ModelProto, Path | None]:
    """A ModelProto and the folder its external data lives in (None for bytes/protos)."""
    if isinstance(model, onnx.ModelProto):
        return model, None
    if isinstance(model, (bytes, bytearray)):
        return _parse(bytes(model), "<bytes>"), None
    path = Path(model)
    if not path.is_file():
        raise ModelLoadError(f"{path}: no such model file")
    proto = _parse(path.read_bytes(), str(path))
    load_external_data(proto, path.parent, str(path))
    return proto, path.parent


def _parse(data: bytes, where: str) -> onnx.ModelProto:
    proto = onnx.ModelProto()
    try:
        proto.ParseFromString(data)
    except Exception as exc:  # protobuf raises DecodeError and friends
        raise ModelLoadError(f"{where}: not a valid ONNX model ({type(exc).__name__}: {exc})",
                             hint="the file is truncated or not an .onnx file") from None
    if not proto.HasField("graph"):
        raise ModelLoadError(f"{where}: not a valid ONNX model (it has no graph)")
    _check_text(proto, where, "model")
    return proto


def _check_text(msg, where: str, path: str) -> None:
    """Refuse string fields that are not UTF-8 (protobuf then hands out bytes, not str)."""
    from google.protobuf.descriptor import FieldDescriptor

    for field, value in msg.ListFields():
        values = value if field.is_repeated else [value]
        if field.type == FieldDescriptor.TYPE_STRING:
            if any(isinstance(v, bytes) for v in values):
                raise ModelLoadError(f"{where}: not a valid ONNX model ({path}.{field.name} is not UTF-8 text)",
                                     hint="the file is corrupt")
        elif field.type == FieldDescriptor.TYPE_MESSAGE:
            for item in values:
                _check_text(item, where, f"{path}.{field.name}")


def _all_tensors(graph: onnx.GraphProto) -> Iterator[onnx.TensorProto]:
    yield from graph.initializer
    for node in graph.node:
        for attr in node.attribute:
            if attr.HasField("t"):
                yield attr.t
            yield from attr.tensors
            if attr.HasField("g"):
                yield from _all_tensors(attr.g)
            for g in attr.graphs:
                yield from _all_tensors(g)


def load_external_data(proto: onnx.ModelProto, base: Path, where: str) -> None:
    """Read external-data tensors, refusing any location outside the model's folder."""
    base = base.resolve()
    for tensor in _all_tensors(proto.graph):
        if tensor.data_location != onnx.TensorProto.EXTERNAL:
            continue
        info = {e.key: e.value for e in tensor.external_data}
        location = info.get("location", "")
        target = (base / location).resolve()
        if not location or os.path.isabs(location) or base not in target.parents:
            raise ModelLoadError(f"{where}: tensor {tensor.name!r} points at external data "
                                 f"{location!r} outside the model's folder; refused",
                                 hint="keep external data files beside the .onnx file")
        if not target.is_file():
            raise ModelLoadError(f"{where}: external data file {location!r} of tensor "
                                 f"{tensor.name!r} is missing")
        offset, length = int(info.get("offset", 0) or 0), info.get("length")
        with open(target, "rb") as f:
            f.seek(offset)
            data = f.read(int(length)) if length else f.read()
        if length and len(data) != int(length):
            raise ModelLoadError(f"{where}: external data of tensor {tensor.name!r} is truncated")
        tensor.raw_data = data
        tensor.data_location = onnx.TensorProto.DEFAULT
        del tensor.external_data[:]


def to_array(tensor: onnx.TensorProto, where: str = "") -> np.ndarray:
    """A numpy array (ml_dtypes for exotic types, object arrays for strings)."""
    if tensor.data_location == onnx.TensorProto.EXTERNAL:
        raise ModelLoadError(f"{where}tensor {tensor.name!r} has external data that was not loaded",
                             hint="load the model from its file path so its data files are found")
    to_dtype(tensor.data_type, where)
    try:
        array = numpy_helper.to_array(tensor)
    except Exception as exc:
        raise ModelLoadError(f"{where}tensor {tensor.name!r} cannot be read: {exc}") from None
    if tensor.data_type == onnx.TensorProto.STRING:
        array = np.array([s.decode("utf-8", "replace") if isinstance(s, bytes) else s
                          for s in array.reshape(-1)], dtype=object).reshape(array.shape)
    return array


# -- types ---------------------------------------------------------------------------------

def to_type(tp: onnx.TypeProto, where: str = "") -> Type | None:
    """A qir type from an ONNX TypeProto (None when it says nothing)."""
    kind = tp.WhichOneof("value")
    if kind == "tensor_type":
        tt = tp.tensor_type
        if tt.elem_type == 0:
            return None
        shape = None
        if tt.HasField("shape"):
            shape = tuple(d.dim_value if d.HasField("dim_value") else (d.dim_param or "?")
                          for d in tt.shape.dim)
        return TensorType(to_dtype(tt.elem_type, where), shape)
    if kind == "sequence_type":
        elem = to_type(tp.sequence_type.elem_type, where)
        return SequenceType(elem or TensorType(DType.FLOAT32, None))
    if kind == "optional_type":
        elem = to_type(tp.optional_type.elem_type, where)
        return OptionalType(elem or TensorType(DType.FLOAT32, None))
    if kind is None:
        return None
    raise UnsupportedOpError(f"{where}ONNX type {kind} is not supported")


def _refine(inferred: Type | None, declared: Type | None) -> Type | None:
    """qir's inferred type, with shape details filled from ONNX's where qir's are unknown."""
    if inferred is None:
        return declared
    if not (isinstance(inferred, TensorType) and isinstance(declared, TensorType)):
        return inferred
    if declared.dtype != inferred.dtype or declared.shape is None:
        return inferred
    if inferred.shape is None:
        return inferred.with_shape(declared.shape)
    if len(inferred.shape) != len(declared.shape):
        return inferred
    dims = tuple(d if isinstance(d, int) or not isinstance(e, int) else e
                 for d, e in zip(inferred.shape, declared.shape))
    return inferred.with_shape(dims)


# -- converting ----------------------------------------------------------------------------

class ConvertContext:
    """What a converter sees of one ONNX node, and how it adds qir nodes."""

    def __init__(self, importer: "Importer", node: onnx.NodeProto, graph: Graph,
                 scope: "Scope", opset: int):
        self.importer = importer
        self.node = node
        self.graph = graph
        self.scope = scope
        self.opset = opset
        self.name = node.name or (node.output[0] if node.output else node.op_type)
        self.inputs: list[Value | None] = [scope.lookup(n, self.name) if n else None for n in node.input]
        while self.inputs and self.inputs[-1] is None:
            self.inputs.pop()
        self.num_outputs = len(node.output)
        self.attrs: dict[str, Any] = {a.name: self._attr_value(a) for a in node.attribute}

    def _attr_value(self, attr: onnx.AttributeProto) -> Any:
        where = f"node {self.name} ({self.node.op_type}): "
        if attr.ref_attr_name:
            raise UnsupportedOpError(f"{where}attribute references (functions) are not supported")
        value = onnx.helper.get_attribute_value(attr)
        if isinstance(value, bytes):
            return value.decode("utf-8", "replace")
        if isinstance(value, onnx.TensorProto):
            return to_array(value, where)
        if isinstance(value, onnx.GraphProto):
            return value  # converted on demand by ctx.subgraph()
        if isinstance(value, onnx.TypeProto):
            return to_type(value, where)
        if isinstance(value, onnx.SparseTensorProto):
            raise UnsupportedOpError(f"{where}sparse tensor attributes are not supported")
        if isinstance(value, list):
            if value and isinstance(value[0], bytes):
                return tuple(v.decode("utf-8", "replace") for v in value)
            if value and isinstance(value[0], onnx.TensorProto):
                return tuple(to_array(v, where) for v in value)
            if value and isinstance(value[0], onnx.GraphProto):
                return tuple(value)
            return tuple(value)
        return value

    # helpers for converters
    def emit(self, op: str, inputs, attrs: dict[str, Any] | None = None,
             num_outputs: int | None = None) -> list[Value]:
        """Add a qir node (provenance: this ONNX node) and return its outputs."""
        # Node and value names share one namespace: leave the ONNX output names to the values
        # (graph outputs must keep the model's names), and let add_node make the name unique.
        base = f"{self.name}_{self.node.op_type}" if self.name in self.node.output else self.name
        node = self.graph.add_node(op, list(inputs), attrs or {}, name=base,
                                   num_outputs=self.num_outputs if num_outputs is None else num_outputs,
                                   provenance=(self.name,))
        return list(node.outputs)

    def const(self, array, dtype=None) -> Value:
        """A new constant Value."""
        array = np.asarray(array, dtype=dtype)
        return self.graph.add_constant(array, self.graph.unique_name(f"{self.name}_const"))

    def const_ints(self, values) -> Value | None:
        """An int64 constant from a list of ints (None stays None)."""
        return None if values is None else self.const(np.asarray(values, dtype=np.int64))

    def value_of(self, value: Value | None) -> np.ndarray | None:
        return None if value is None else value.const

    def dtype(self, onnx_elem_type: int) -> DType:
        return to_dtype(onnx_elem_type, f"node {self.name}: ")

    def subgraph(self, attr: str) -> Graph:
        """Convert the GraphProto attribute ``attr`` into a qir subgraph of the current graph."""
        proto = self.attrs[attr]
        return self.importer.convert_graph(proto, parent=self.graph, outer=self.scope)

    def fail(self, message: str) -> QirError:
        return UnsupportedOpError(f"node {self.name} ({self.node.op_type}): {message}")


class Scope:
    """ONNX name → qir Value, chained to the enclosing graph's scope."""

    def __init__(self, outer: "Scope | None" = None):
        self.names: dict[str, Value] = {}
        self.outer = outer
        #: ONNX value name → the node producing it, to explain use-before-definition (cycles).
        self.producers: dict[str, str] = {}

    def lookup(self, name: str, where: str) -> Value:
        scope = self
        while scope is not None:
            if name in scope.names:
                return scope.names[name]
            scope = scope.outer
        producer = next((s.producers[name] for s in self._chain() if name in s.producers), None)
        if producer is not None:
            raise ModelLoadError(f"node {where}: input {name!r} is produced only later, by node "
                                 f"{producer!r}: the nodes are not in topological order or form a cycle",
                                 hint="ONNX requires topologically sorted nodes; a cycle cannot run")
        raise ModelLoadError(f"node {where}: input {name!r} is not produced by any node, input or "
                             f"initializer", hint="the model is incomplete (missing initializer?)")

    def _chain(self) -> Iterator["Scope"]:
        scope = self
        while scope is not None:
            yield scope
            scope = scope.outer


class Importer:
    def __init__(self, proto: onnx.ModelProto, where: str):
        self.proto = proto
        self.where = where
        self.opsets = {canonical_domain(o.domain): o.version for o in proto.opset_import}
        if not proto.opset_import:  # very old models
            self.opsets[""] = 1
        self.value_info: dict[str, Type] = {}
        self.functions = {(f.domain, f.name): f for f in proto.functions}
        #: ONNX value names not yet given to their value: held in the graph tree's name set so
        #: that names converters make up for internal nodes/values never take them.
        self.reserved: set[str] = set()
        self.top_outputs = {vi.name for vi in proto.graph.output}

    def run(self) -> Graph:
        self._check_supported()
        self._collect_value_info()
        graph = self.convert_graph(self.proto.graph, parent=None, outer=None)
        graph.doc = self.proto.doc_string
        graph.metadata = {p.key: p.value for p in self.proto.metadata_props}
        graph.metadata.setdefault("onnx.opset", str(self.opsets.get("", 1)))
        if self.proto.producer_name:
            graph.metadata.setdefault("onnx.producer", self.proto.producer_name)
        return graph

    def _check_supported(self) -> None:
        missing: dict[tuple[str, str], list[str]] = collections.OrderedDict()
        for node in _walk_nodes(self.proto.graph):
            domain = canonical_domain(node.domain)
            if domain not in self.opsets and domain != "":
                version = 1
            else:
                version = self.opsets.get(domain, 1)
            if lookup(domain, node.op_type, version) is None:
                missing.setdefault((domain, node.op_type), []).append(node.name or (node.output[0] if node.output else "?"))
        if missing:
            lines = [f"  {d + '::' if d else ''}{op} ×{len(names)} (e.g. {', '.join(names[:3])})"
                     for (d, op), names in missing.items()]
            raise UnsupportedOpError(
                f"{self.where}: {len(missing)} unsupported op type(s) at opset "
                f"{self.opsets.get('', '?')}:\n" + "\n".join(lines),
                hint="these ops have no qir converter yet; please file an issue with the list")

    def _collect_value_info(self) -> None:
        try:
            inferred = onnx.shape_inference.infer_shapes(self.proto, strict_mode=False)
        except Exception:  # ONNX's own inference is a hint only
            inferred = self.proto
        for vi in list(inferred.graph.value_info) + list(inferred.graph.output):
            try:
                t = to_type(vi.type)
            except QirError:
                continue
            if t is not None:
                self.value_info[vi.name] = t

    def convert_graph(self, proto: onnx.GraphProto, parent: Graph | None, outer: Scope | None) -> Graph:
        graph = Graph(proto.name or "main", parent=parent)
        if parent is None:
            self._reserve(proto, graph)
        scope = Scope(outer)
        where = f"{self.where}: graph {proto.name!r}: "
        scope.producers = {out: node.name or out for node in proto.node for out in node.output if out}
        initializers = {t.name: t for t in proto.initializer}
        for vi in proto.input:
            if vi.name in initializers and parent is None:
                continue  # an initializer listed as input (IR < 4): a constant, as onnxruntime does
            t = to_type(vi.type, where)
            if t is None:
                raise ModelLoadError(f"{where}input {vi.name!r} has no type")
            self._take(graph, vi.name)
            scope.names[vi.name] = graph.add_input(vi.name, t)
        for name, tensor in initializers.items():
            self._take(graph, name)
            scope.names[name] = graph.add_constant(to_array(tensor, where), name)
        for node in proto.node:
            self._convert_node(node, graph, scope)
        self._set_outputs(proto, graph, scope, where)
        return graph

    def _reserve(self, proto: onnx.GraphProto, graph: Graph) -> None:
        """Hold every ONNX value name of the model (subgraphs too) in ``graph``'s name set."""
        self.reserved = set(_value_names(proto))
        graph._names.update(self.reserved)

    def _take(self, graph: Graph, name: str) -> None:
        """Release the reserved ONNX name ``name`` for the value about to get it. The main
        graph's output names are released only to the main graph's values, so that a subgraph
        value of the same name cannot take them."""
        if name in self.reserved and (graph.parent is None or name not in self.top_outputs):
            self.reserved.discard(name)
            graph._names.discard(name)

    def _convert_node(self, node: onnx.NodeProto, graph: Graph, scope: Scope) -> None:
        domain = canonical_domain(node.domain)
        version = self.opsets.get(domain, 1)
        conv = lookup(domain, node.op_type, version)
        ctx = ConvertContext(self, node, graph, scope, version)
        try:
            outputs = conv.fn(ctx)
        except QirError:
            raise
        except Exception as exc:
            raise ModelLoadError(f"{self.where}: node {ctx.name} ({node.op_type}) cannot be converted: "
                                 f"{type(exc).__name__}: {exc}") from exc
        for name, value in zip(node.output, outputs):
            if not name or value is None:
                continue
            if value.producer is not None and value.graph is graph and value.name != name:
                self._take(graph, name)
                graph.rename(value, name)
            if name in self.value_info and value.producer is not None:
                value.type = _refine(value.type, self.value_info[name])
            scope.names[name] = value

    def _set_outputs(self, proto: onnx.GraphProto, graph: Graph, scope: Scope, where: str) -> None:
        seen: set[int] = set()
        for vi in proto.output:
            value = scope.lookup(vi.name, f"graph output {vi.name}")
            # Outputs are distinct, named node outputs of this graph, so that callers get the
            # model's own output names: pass inputs, constants and repeats through an identity.
            if value.producer is None or value.graph is not graph or id(value) in seen or value.name != vi.name:
                if value.is_constant and value.name == vi.name:
                    graph.rename(value, f"{vi.name}_const")  # leave the output name to the identity
                self._take(graph, vi.name)
                node = graph.add_node("tensor.identity", [value], name=graph.unique_name(f"{vi.name}_identity"),
                                      output_names=[vi.name])
                value = node.output
            declared = to_type(vi.type, where)
            value.type = _refine(value.type, declared)
            seen.add(id(value))
            graph.outputs.append(value)


def _value_names(graph: onnx.GraphProto) -> Iterator[str]:
    """Every value name of ``graph`` and its subgraphs (inputs, initializers, node outputs)."""
    yield from (vi.name for vi in graph.input)
    yield from (t.name for t in graph.initializer)
    yield from (vi.name for vi in graph.output)
    for node in _walk_nodes(graph):
        yield from (name for name in node.output if name)
        for attr in node.attribute:
            for g in ([attr.g] if attr.HasField("g") else []) + list(attr.graphs):
                yield from (vi.name for vi in g.input)
                yield from (t.name for t in g.initializer)


def _walk_nodes(graph: onnx.GraphProto) -> Iterator[onnx.NodeProto]:
    for node in graph.node:
        yield node
        for attr in node.attribute:
            if attr.HasField("g"):
                yield from _walk_nodes(attr.g)
            for g in attr.graphs:
                yield from _walk_nodes(g)


def load_onnx(model: Any) -> Graph:
    """Import an ONNX model (path, bytes or ModelProto) as a verified qir Graph."""
    from qir.ir.verifier import verify

    proto, _ = read_model(model)
    where = str(model) if isinstance(model, (str, os.PathLike)) else f"model {proto.graph.name!r}"
    graph = Importer(proto, where).run()
    verify(graph)
    return graph
