"""Value, Node and Graph: the IR anyone can walk and edit.

Use-def lists are kept by the graph's mutation methods (``add_node``, ``set_input``,
``replace_all_uses``, ``erase_node``...), never by hand. A graph's nodes are kept in
topological order; subgraphs (If/Loop/Scan bodies) are Graphs held in node attributes and may
use Values of their enclosing graphs.
"""

from __future__ import annotations

import itertools
from typing import Any, Iterable, Iterator, NamedTuple, Sequence

import numpy as np

from qir.errors import VerificationError
from qir.ir.types import Type, TensorType, tensor_type_of


def merge_provenance(nodes: Iterable["Node"]) -> tuple[str, ...]:
    """The union of the nodes' provenance, in first-seen order: what a fused node carries."""
    return tuple(dict.fromkeys(name for node in nodes for name in node.provenance))


class Use(NamedTuple):
    """One use of a Value: ``node.inputs[index] is value``."""

    node: "Node"
    index: int


class Value:
    """An SSA value: a graph input, a constant (holding ``const``) or a node output.

    Values compare by identity. ``uses`` lists every (node, input index) reading it; graph
    outputs are not uses (see ``Graph.outputs``).
    """

    __slots__ = ("name", "type", "producer", "index", "const", "graph", "_uses")

    def __init__(self, name: str, type: Type | None, *, producer: "Node | None" = None,
                 index: int = 0, const: np.ndarray | None = None):
        self.name = name
        self.type = type
        self.producer = producer
        self.index = index
        self.const = const
        self.graph: Graph | None = None
        self._uses: list[Use] = []

    @property
    def uses(self) -> tuple[Use, ...]:
        return tuple(self._uses)

    @property
    def users(self) -> list["Node"]:
        """The distinct nodes that read this value, in use order."""
        return list(dict.fromkeys(u.node for u in self._uses))

    @property
    def is_constant(self) -> bool:
        return self.const is not None

    @property
    def is_graph_input(self) -> bool:
        return self.producer is None and self.const is None

    def __repr__(self) -> str:
        return f"Value(%{self.name}: {self.type})"


class Node:
    """An op applied to input Values, producing output Values.

    ``inputs`` may hold None for an omitted optional input. ``attrs`` are typed attribute
    values (int, float, str, lists, numpy arrays, DType, Type, Graph). ``provenance`` names the
    source-model nodes this node came from; ``target`` is written by partitioning.
    """

    __slots__ = ("op", "name", "attrs", "_inputs", "outputs", "provenance", "target", "graph")

    def __init__(self, op: str, name: str, attrs: dict[str, Any] | None = None,
                 provenance: Iterable[str] = (), target: str | None = None):
        self.op = op
        self.name = name
        self.attrs: dict[str, Any] = dict(attrs or {})
        self._inputs: list[Value | None] = []
        self.outputs: tuple[Value, ...] = ()
        self.provenance: tuple[str, ...] = tuple(provenance)
        self.target = target
        self.graph: Graph | None = None

    @property
    def inputs(self) -> tuple[Value | None, ...]:
        return tuple(self._inputs)

    @property
    def output(self) -> Value:
        """The single output of a one-output node."""
        if len(self.outputs) != 1:
            raise ValueError(f"node {self.name} ({self.op}) has {len(self.outputs)} outputs")
        return self.outputs[0]

    def set_input(self, index: int, value: Value | None) -> None:
        """Point input ``index`` at ``value``, keeping both use lists right."""
        old = self._inputs[index]
        if old is not None:
            old._uses.remove(Use(self, index))
        self._inputs[index] = value
        if value is not None:
            value._uses.append(Use(self, index))

    def subgraphs(self) -> list["Graph"]:
        """The Graphs held in this node's attributes (If branches, Loop/Scan bodies)."""
        found = []
        for value in self.attrs.values():
            if isinstance(value, Graph):
                found.append(value)
            elif isinstance(value, (list, tuple)):
                found.extend(v for v in value if isinstance(v, Graph))
        return found

    def __repr__(self) -> str:
        ins = ", ".join("_" if v is None else "%" + v.name for v in self._inputs)
        outs = ", ".join("%" + v.name for v in self.outputs)
        return f"Node({outs} = {self.op}({ins}) @{self.name})"


class Graph:
    """A function from input Values to output Values, with nodes in topological order.

    Constants live in ``constants`` (name → Value with ``const`` set). Names are unique across
    a graph and all its subgraphs, so the textual form needs no scoping rules.
    """

    def __init__(self, name: str = "main", parent: "Graph | None" = None):
        self.name = name
        self.parent = parent
        self.inputs: list[Value] = []
        self.outputs: list[Value] = []
        self.nodes: list[Node] = []
        self.constants: dict[str, Value] = {}
        self.doc: str = ""
        self.metadata: dict[str, str] = {}
        self._names: set[str] = set() if parent is None else parent.root._names
        self._counter = itertools.count() if parent is None else parent.root._counter

    # -- names -----------------------------------------------------------------------------
    @property
    def root(self) -> "Graph":
        g = self
        while g.parent is not None:
            g = g.parent
        return g

    def unique_name(self, base: str = "v") -> str:
        """A name not yet used in this graph tree, derived from ``base``."""
        base = base or "v"
        name = base
        while name in self._names:
            name = f"{base}_{next(self._counter)}"
        self._names.add(name)
        return name

    def _claim(self, name: str | None, base: str) -> str:
        if name is not None and name not in self._names:
            self._names.add(name)
            return name
        return self.unique_name(name or base)

    def rename(self, value: Value, name: str) -> None:
        """Give ``value`` a new name; a taken name gets a numeric suffix."""
        if name == value.name:
            return
        self._names.discard(value.name)
        if value.graph is not None and value.name in value.graph.constants:
            value.graph.constants.pop(value.name)
            value.name = self._claim(name, name)
            value.graph.constants[value.name] = value
        else:
            value.name = self._claim(name, name)

    # -- building --------------------------------------------------------------------------
    def add_input(self, name: str, type: Type) -> Value:
        value = Value(self._claim(name, "input"), type)
        value.graph = self
        self.inputs.append(value)
        return value

    def add_constant(self, array, name: str | None = None, type: TensorType | None = None) -> Value:
        """A constant Value holding ``array`` (the graph keeps it; callers must not mutate it)."""
        array = np.asarray(array) if not isinstance(array, np.ndarray) else array
        value = Value(self._claim(name, "const"), type or tensor_type_of(array), const=array)
        value.graph = self
        self.constants[value.name] = value
        return value

    def add_node(self, op: str, inputs: Sequence[Value | None], attrs: dict[str, Any] | None = None,
                 *, name: str | None = None, output_names: Sequence[str | None] | None = None,
                 output_types: Sequence[Type | None] | None = None, num_outputs: int | None = None,
                 provenance: Iterable[str] | None = None, before: Node | None = None,
                 after: Node | None = None, infer: bool = True) -> Node:
        """Create a node, append it (or insert it before/after another) and return it.

        Output types are inferred with the op's own inference unless given.
        """
        node = Node(op, self._claim(name, op.rsplit(".", 1)[-1]), attrs,
                    provenance=(name,) if provenance is None and name else (provenance or ()))
        node.graph = self
        for i, value in enumerate(inputs):
            node._inputs.append(value)
            if value is not None:
                value._uses.append(Use(node, i))
        if output_types is None and infer:
            from qir.ir.opdef import infer_types

            output_types = infer_types(node, num_outputs)
        n_out = len(output_types) if output_types is not None else (num_outputs or 1)
        names = list(output_names or [])
        names += [None] * (n_out - len(names))
        node.outputs = tuple(
            self._make_output(node, i, names[i], None if output_types is None else output_types[i])
            for i in range(n_out))
        self._place(node, before, after)
        return node

    def _make_output(self, node: Node, index: int, name: str | None, type: Type | None) -> Value:
        value = Value(self._claim(name, node.name if index == 0 else f"{node.name}_{index}"),
                      type, producer=node, index=index)
        value.graph = self
        return value

    def _place(self, node: Node, before: Node | None, after: Node | None) -> None:
        if before is not None:
            self.nodes.insert(self.nodes.index(before), node)
        elif after is not None:
            self.nodes.insert(self.nodes.index(after) + 1, node)
        else:
            self.nodes.append(node)

    # -- editing ---------------------------------------------------------------------------
    def replace_all_uses(self, old: Value, new: Value, *, include_outputs: bool = True) -> None:
        """Make every reader of ``old`` (in this graph tree) read ``new`` instead."""
        for use in list(old._uses):
            use.node.set_input(use.index, new)
        if include_outputs:
            for g in self._graph_tree():
                g.outputs = [new if v is old else v for v in g.outputs]

    def erase_node(self, node: Node) -> None:
        """Remove a node whose outputs are unused (raises otherwise)."""
        for out in node.outputs:
            if out._uses or any(out is v for v in self.outputs):
                raise VerificationError(
                    f"cannot erase node {node.name} ({node.op}): its output %{out.name} is still used")
        for i, value in enumerate(node._inputs):
            if value is not None:
                value._uses.remove(Use(node, i))
        node._inputs = [None] * len(node._inputs)
        self.nodes.remove(node)
        node.graph = None

    def erase_constant(self, value: Value) -> None:
        if value._uses:
            raise VerificationError(f"cannot erase constant %{value.name}: it is still used")
        del self.constants[value.name]
        self._names.discard(value.name)

    def topological_sort(self) -> None:
        """Reorder nodes so each comes after the producers of its inputs (stable)."""
        from qir.ir.verifier import topological_order

        self.nodes = topological_order(self)

    # -- walking ---------------------------------------------------------------------------
    def _graph_tree(self) -> Iterator["Graph"]:
        yield self
        for node in self.nodes:
            for sub in node.subgraphs():
                yield from sub._graph_tree()

    def walk(self) -> Iterator[Node]:
        """Every node of this graph and its subgraphs, outer nodes first in order."""
        for node in self.nodes:
            yield node
            for sub in node.subgraphs():
                yield from sub.walk()

    def values(self) -> Iterator[Value]:
        """Inputs, constants and node outputs of this graph (not of subgraphs)."""
        yield from self.inputs
        yield from self.constants.values()
        for node in self.nodes:
            yield from node.outputs

    def copy(self) -> "Graph":
        """A structural copy: names, types, attributes, provenance, targets and subgraphs.
        Constants share their arrays with this graph (passes replace constants, never mutate them)."""
        return _copy_into(self, None, {})

    def find_node(self, name: str) -> Node | None:
        return next((n for n in self.walk() if n.name == name), None)

    def __repr__(self) -> str:
        return f"Graph(@{self.name}: {len(self.inputs)} inputs, {len(self.nodes)} nodes, {len(self.outputs)} outputs)"

    def __str__(self) -> str:
        from qir.ir.printer import print_graph

        return print_graph(self)


def _copy_into(src: Graph, parent: Graph | None, vmap: dict[int, Value]) -> Graph:
    g = Graph(src.name, parent)
    g.doc, g.metadata = src.doc, dict(src.metadata)
    if parent is None:  # the same names, even those a parsed graph repeats across subgraphs
        g._names.update(src.root._names)
    for v in src.inputs:
        vmap[id(v)] = _same_name(g.add_input(v.name, v.type), v.name)
    for v in src.constants.values():
        copy = g.add_constant(v.const, v.name, v.type)
        g.constants[v.name] = g.constants.pop(copy.name)
        vmap[id(v)] = _same_name(copy, v.name)
    for node in src.nodes:
        attrs = {k: _copy_attr(val, g, vmap) for k, val in node.attrs.items()}
        new = g.add_node(node.op, [None if v is None else vmap[id(v)] for v in node.inputs], attrs,
                         name=node.name, output_types=[o.type for o in node.outputs],
                         provenance=node.provenance)
        new.name, new.target = node.name, node.target
        for old, out in zip(node.outputs, new.outputs):
            vmap[id(old)] = _same_name(out, old.name)
    g.outputs = [vmap[id(v)] for v in src.outputs]
    return g


def _same_name(value: Value, name: str) -> Value:
    value.name = name
    return value


def _copy_attr(value: Any, parent: Graph, vmap: dict[int, Value]) -> Any:
    if isinstance(value, Graph):
        return _copy_into(value, parent, vmap)
    if isinstance(value, (list, tuple)):
        return type(value)(_copy_attr(v, parent, vmap) for v in value)
    return value
