"""qir Graph → ONNX ModelProto, so that qir's graphs can be viewed in Netron and run elsewhere.

Every qir op maps back to the ONNX op type recorded by its converter (``registry.EXPORT_NAMES``).
qir ops have the semantics of the newest ONNX version of the op, so the model's opset is the
smallest one, not below the graph's original ``onnx.opset``, in which every used op already has
its newest schema. Attributes are written from the node's resolved attributes (qir defaults
included), leaving out None and empty lists (qir's "not given") and values equal to ONNX's own
default (except for ops with a function body, whose expansion by onnx.checker ignores
defaults: those get every attribute). Constants become initializers (a
subgraph's constants: initializers of that subgraph); graph inputs and outputs keep their names,
order and types; omitted optional inputs become ``""``; provenance goes to ``doc_string``.

Ops without an ONNX equivalent but with a decomposition (``OpDef.decompose``: qir's fused ops,
e.g. ``fused.conv`` → Conv (+ Add) + Relu/Clip) are exported as their standard equivalents: the
exporter expands them on a copy of the graph (the caller's graph is left as it is), each
standard node carrying the fused node's provenance.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

from qir.errors import QirError
from qir.frontends.onnx.dtypes import from_dtype
from qir.frontends.onnx.registry import EXPORT_NAMES, _load_builtin_converters
from qir.ir.graph import Graph, Node, Value
from qir.ir.opdef import get_op
from qir.ir.types import DType, OptionalType, SequenceType, TensorType, Type

#: Metadata keys the importer derives from the ModelProto itself; not copied to metadata_props.
_DERIVED_METADATA = ("onnx.opset", "onnx.producer")
#: dtypes newer than the IR version the opset alone would need.
_NEW_IR_DTYPES = {DType.FLOAT8E4M3FN, DType.FLOAT8E4M3FNUZ, DType.FLOAT8E5M2, DType.FLOAT8E5M2FNUZ,
                  DType.FLOAT8E8M0, DType.FLOAT4E2M1, DType.FLOAT6E2M3, DType.FLOAT6E3M2,
                  DType.INT4, DType.UINT4, DType.INT2, DType.UINT2}
#: Highest version asked of onnx.defs for domains without a global opset number (ai.onnx.ml...).
_ANY_VERSION = 10_000


def export_onnx(graph: Graph, opset: int | None = None, *, value_info: bool = True) -> onnx.ModelProto:
    """Export ``graph`` as an ONNX ModelProto (checked by onnx.checker, runnable by onnxruntime).

    ``opset`` forces the ai.onnx opset (it must not be older than what the used ops need);
    by default it is the graph's ``onnx.opset`` metadata raised as far as the ops need.
    ``value_info`` records the type of every intermediate value (what Netron shows on edges).
    Ops without an ONNX mapping raise one QirError listing all of them.
    """
    _load_builtin_converters()
    graph = _standard_ops_only(graph)
    mapping = _op_mapping(graph)
    opsets = _choose_opsets(graph, mapping, opset)
    writer = _Writer(mapping, opsets, value_info)
    graph_proto = writer.graph(graph, top=True)
    imports = [helper.make_opsetid(d, v) for d, v in sorted(opsets.items())]
    model = helper.make_model(graph_proto, opset_imports=imports, producer_name="qir",
                              producer_version=_qir_version(),
                              ir_version=_ir_version(imports, writer.dtypes))
    model.doc_string = graph.doc or ""
    for key, val in graph.metadata.items():
        if key not in _DERIVED_METADATA:
            model.metadata_props.add(key=str(key), value=str(val))
    return model


def _qir_version() -> str:
    from qir.version import __version__

    return __version__


# -- decompositions ------------------------------------------------------------------------

def _needs_expansion(node: Node) -> bool:
    return node.op not in EXPORT_NAMES and get_op(node.op).decompose is not None


def _standard_ops_only(graph: Graph) -> Graph:
    """``graph``, or a copy of it with every op that has no ONNX mapping but a decomposition
    replaced by that decomposition (again, until only mapped ops remain)."""
    from qir.ir.opdef import has_op
    from qir.ir.ops.fused import expand_all

    if not any(has_op(n.op) and _needs_expansion(n) for n in graph.walk()):
        return graph
    copy = graph.copy()
    expand_all(copy, lambda n: has_op(n.op) and _needs_expansion(n))
    return copy


# -- op mapping and opsets -----------------------------------------------------------------

def _op_mapping(graph: Graph) -> dict[str, tuple[str, str]]:
    """qir op → (ONNX domain, op type) for every op of the graph; all unmapped ops in one error."""
    missing: dict[str, list[str]] = {}
    mapping = {}
    for node in graph.walk():
        if node.op in EXPORT_NAMES:
            mapping[node.op] = EXPORT_NAMES[node.op]
        else:
            missing.setdefault(node.op, []).append(node.name)
    if missing:
        lines = [f"  {op} ×{len(names)} (e.g. {', '.join(names[:3])})" for op, names in missing.items()]
        raise QirError(f"graph @{graph.name}: {len(missing)} op type(s) have no ONNX equivalent:\n"
                       + "\n".join(lines),
                       hint="export before passes that introduce qir-only ops, or register a converter "
                            "with qir_op=... for them")
    return mapping


def _newest_since(domain: str, op_type: str) -> int:
    """The opset version in which ``op_type`` got the semantics of its newest schema."""
    top = onnx.defs.onnx_opset_version() if domain == "" else _ANY_VERSION
    try:
        return onnx.defs.get_schema(op_type, top, domain).since_version
    except onnx.defs.SchemaError:
        return 1  # a custom domain onnx does not know: version 1 by convention


def _choose_opsets(graph: Graph, mapping: dict[str, tuple[str, str]], forced: int | None) -> dict[str, int]:
    need: dict[str, int] = {"": 1}
    for domain, op_type in mapping.values():
        need[domain] = max(need.get(domain, 1), _newest_since(domain, op_type))
    newest = onnx.defs.onnx_opset_version()
    if forced is not None:
        if forced < need[""]:
            late = sorted(t for d, t in mapping.values() if d == "" and _newest_since(d, t) > forced)
            raise QirError(f"cannot export graph @{graph.name} at opset {forced}: qir's semantics of "
                           f"{', '.join(late)} need opset {need['']}",
                           hint=f"use opset={need['']} or newer (up to {newest})")
        need[""] = forced
    else:
        try:
            meta = int(graph.metadata.get("onnx.opset", 1))
        except ValueError:
            meta = 1
        need[""] = min(max(need[""], meta), newest)
    return need


def _ir_version(imports: list, dtypes: set[DType]) -> int:
    ir = helper.find_min_ir_version_for(imports, ignore_unknown=True)
    # Exotic element types came with later IR versions than their opsets' minimum.
    return onnx.IR_VERSION if dtypes & _NEW_IR_DTYPES else max(ir, 4)


# -- writing -------------------------------------------------------------------------------

class _Writer:
    def __init__(self, mapping: dict[str, tuple[str, str]], opsets: dict[str, int], value_info: bool):
        self.mapping = mapping
        self.opsets = opsets
        self.value_info = value_info
        self.dtypes: set[DType] = set()

    def graph(self, graph: Graph, top: bool = False) -> onnx.GraphProto:
        nodes = [self.node(n) for n in graph.nodes]
        outputs, extra = self._outputs(graph, top)
        nodes.extend(extra)
        inputs = [self.value_info_of(v, required=top) for v in graph.inputs]
        inits = [self.tensor(v.const, v.name) for v in graph.constants.values()]
        infos = []
        if self.value_info:
            out_names = {o.name for o in outputs}
            infos = [self.value_info_of(v) for n in graph.nodes for v in n.outputs
                     if v.type is not None and v.name not in out_names]
        proto = helper.make_graph(nodes, graph.name, inputs, outputs, initializer=inits,
                                  value_info=infos, doc_string=graph.doc or None)
        return proto

    def _outputs(self, graph: Graph, top: bool) -> tuple[list[onnx.ValueInfoProto], list[onnx.NodeProto]]:
        """Output ValueInfos; a subgraph output that is not its own node's output goes through an Identity."""
        infos, extra, seen = [], [], set()
        for value in graph.outputs:
            own = value.producer is not None and value.graph is graph
            if not top and (not own or value.name in seen):
                # ONNX subgraph outputs must be produced inside the subgraph (by position, not name).
                name = graph.root.unique_name(f"{value.name}_out")
                extra.append(helper.make_node("Identity", [value.name], [name], name=name))
                infos.append(self._info(name, value.type, required=False))
            else:
                infos.append(self.value_info_of(value, required=top))
            seen.add(value.name)
        return infos, extra

    def value_info_of(self, value: Value, required: bool = False) -> onnx.ValueInfoProto:
        return self._info(value.name, value.type, required)

    def _info(self, name: str, type: Type | None, required: bool) -> onnx.ValueInfoProto:
        if type is None:
            if required:
                raise QirError(f"graph input/output %{name} has no type; ONNX needs one",
                               hint="run type inference (or give the type) before exporting")
            return helper.make_value_info(name, onnx.TypeProto())
        return helper.make_value_info(name, self.type(type))

    def type(self, t: Type) -> onnx.TypeProto:
        if isinstance(t, TensorType):
            self.dtypes.add(t.dtype)
            shape = None if t.shape is None else [None if d == "?" else d for d in t.shape]
            return helper.make_tensor_type_proto(from_dtype(t.dtype), shape)
        if isinstance(t, SequenceType):
            return helper.make_sequence_type_proto(self.type(t.elem))
        if isinstance(t, OptionalType):
            return helper.make_optional_type_proto(self.type(t.elem))
        raise QirError(f"type {t!r} has no ONNX equivalent")

    def tensor(self, array: Any, name: str = "") -> onnx.TensorProto:
        array = np.asarray(array)
        if array.dtype.kind in "OUS":
            self.dtypes.add(DType.STRING)
            flat = [s if isinstance(s, bytes) else str(s).encode("utf-8") for s in array.reshape(-1)]
            return helper.make_tensor(name, onnx.TensorProto.STRING, array.shape, flat)
        self.dtypes.add(DType.from_numpy(array.dtype))
        # (np.ascontiguousarray would turn a 0-d array into a 1-d one)
        return numpy_helper.from_array(np.require(array, requirements="C"), name)

    # -- nodes ---------------------------------------------------------------------------
    def node(self, node: Node) -> onnx.NodeProto:
        domain, op_type = self.mapping[node.op]
        inputs = [("" if v is None else v.name) for v in node.inputs]
        proto = helper.make_node(op_type, inputs, [v.name for v in node.outputs], name=node.name,
                                 domain=domain or None)
        if node.provenance:
            proto.doc_string = "from " + ", ".join(node.provenance)
        proto.attribute.extend(self.attributes(node, domain, op_type))
        return proto

    def attributes(self, node: Node, domain: str, op_type: str) -> list[onnx.AttributeProto]:
        where = f"node {node.name} ({node.op} → {op_type})"
        resolved = get_op(node.op).resolve_attrs(node.attrs, f"{where}: ")
        schema = _schema(op_type, self.opsets.get(domain, 1), domain)
        # onnx's checker expands function ops without applying attribute defaults (MVN's axes):
        # write every attribute of such ops explicitly.
        explicit = schema is not None and (schema.has_function or schema.has_context_dependent_function)
        out = []
        for key, value in resolved.items():
            if value is None:
                continue  # qir's "not given"
            spec = schema.attributes.get(key) if schema is not None else None
            if spec is None:
                if schema is not None:
                    raise QirError(f"{where}: attribute {key!r}={value!r} has no ONNX counterpart in "
                                   f"{op_type}-{schema.since_version}",
                                   hint="the qir op's attribute names must match ONNX's newest version")
                out.append(self.attribute(key, value, None, where))
                continue
            if isinstance(value, (list, tuple)) and not value:
                continue  # qir's "none given" for a list (output_shape, activations, scan axes...)
            attr = self.attribute(key, value, spec.type, where)
            if not explicit and _same_as_onnx_default(attr, spec):
                continue
            out.append(attr)
        return out

    def attribute(self, key: str, value: Any, kind, where: str) -> onnx.AttributeProto:
        try:
            return helper.make_attribute(key, self._attr_value(value), attr_type=_attr_type(kind))
        except QirError:
            raise
        except Exception as exc:
            raise QirError(f"{where}: attribute {key!r}={value!r} cannot be written to ONNX: {exc}") from exc

    def _attr_value(self, value: Any) -> Any:
        if isinstance(value, DType):
            return from_dtype(value)
        if isinstance(value, (bool, np.bool_)):
            return int(value)
        if isinstance(value, np.generic):
            return value.item()
        if isinstance(value, str):
            return value.encode("utf-8")
        if isinstance(value, np.ndarray):
            return self.tensor(value)
        if isinstance(value, Graph):
            return self.graph(value)
        if isinstance(value, (TensorType, SequenceType, OptionalType)):
            return self.type(value)
        if isinstance(value, (onnx.GraphProto, onnx.TensorProto, onnx.TypeProto)):
            return value
        if isinstance(value, (list, tuple)):
            return [self._attr_value(v) for v in value]
        return value


def _schema(op_type: str, version: int, domain: str):
    try:
        return onnx.defs.get_schema(op_type, version, domain)
    except onnx.defs.SchemaError:
        return None  # custom domain: attributes go out as they are


def _attr_type(kind) -> int | None:
    """The AttributeProto type of an onnx.defs attribute type (None: let onnx guess)."""
    if kind is None:
        return None
    return int(kind.value) if hasattr(kind, "value") else int(kind)


def _same_as_onnx_default(attr: onnx.AttributeProto, spec) -> bool:
    """Whether ``attr`` says what ONNX assumes when it is absent (then it is left out)."""
    default = spec.default_value
    return default is not None and default.type != 0 and _attr_equal(attr, default)


def _attr_equal(a: onnx.AttributeProto, b: onnx.AttributeProto) -> bool:
    if a.type != b.type:
        return False
    va, vb = helper.get_attribute_value(a), helper.get_attribute_value(b)
    if isinstance(va, float):
        return np.float32(va) == np.float32(vb)
    if isinstance(va, list) and va and isinstance(va[0], float):
        return len(va) == len(vb) and all(np.float32(x) == np.float32(y) for x, y in zip(va, vb))
    if isinstance(va, (int, bytes, list)):
        return va == vb
    return False  # tensors, graphs, types: always written


# -- older opsets (QDQ export, issue 5) ----------------------------------------------------

def with_opset(model: onnx.ModelProto, opset: int, same_since: frozenset[str] = frozenset()
               ) -> onnx.ModelProto:
    """``model`` declared at the older ai.onnx ``opset`` (a copy), for runtimes that do not run
    the newest versions yet (onnxruntime and QuantizeLinear).

    Every ai.onnx op must have the same schema version at ``opset`` as at the model's opset, or
    be named in ``same_since`` by a caller that knows the later versions only added what it
    does not use (element types, attributes left at their defaults). The result passes
    onnx.checker's full check at ``opset``.
    """
    current = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), opset)
    if opset >= current:
        return model
    changed = set()
    for node in _all_nodes(model.graph):
        if node.domain not in ("", "ai.onnx"):
            continue
        try:
            old = onnx.defs.get_schema(node.op_type, opset).since_version
        except onnx.defs.SchemaError:
            raise QirError(f"node {node.name}: {node.op_type} does not exist at opset {opset}") from None
        if old != onnx.defs.get_schema(node.op_type, current).since_version and \
                node.op_type not in same_since:
            changed.add(node.op_type)
    if changed:
        raise QirError(f"cannot declare model {model.graph.name} at opset {opset}: "
                       f"{', '.join(sorted(changed))} changed since",
                       hint=f"keep opset {current}")
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    for o in copy.opset_import:
        if o.domain in ("", "ai.onnx"):
            o.version = opset
    copy.ir_version = max(helper.find_min_ir_version_for(list(copy.opset_import), ignore_unknown=True), 4)
    try:
        onnx.checker.check_model(copy, full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        raise QirError(f"model {model.graph.name} is not valid at opset {opset}: {exc}") from exc
    return copy


def _all_nodes(graph: onnx.GraphProto):
    for node in graph.node:
        yield node
        for attr in node.attribute:
            for sub in ([attr.g] if attr.HasField("g") else []) + list(attr.graphs):
                yield from _all_nodes(sub)
