"""Rewrite patterns: match a small subgraph declaratively, build its replacement, and drive a set
of patterns greedily to a fixpoint.

A pattern is a tree of value patterns rooted at one node:

- ``Op(op, *inputs, name=, attrs=, where=, single_use=, commutative=, output=)`` matches a
  Value produced by a node whose op is ``op`` (a name or a tuple of names) and whose inputs match
  ``inputs`` in order (missing trailing inputs count as None). ``attrs`` maps attribute names to
  a required value or to a predicate on the value (attributes are compared with their defaults
  filled in); ``where`` is a predicate on the node. ``single_use=True`` requires the matched
  value to have exactly one reader and not to be a graph output (so that the matched node dies
  with the rewrite); ``commutative=True`` also tries a two-input node's inputs swapped. An inner
  ``Op`` only matches a node of the root's own graph.
- ``Var(name, optional=False, where=None)`` matches any Value (or a missing input, when
  ``optional``) and binds it to ``name``; ``Const(name, where=None)`` matches a constant Value and
  its ``where`` predicate sees the numpy array. A name bound twice must bind the same Value.

``Pattern(name, root, build, where=..., benefit=...)`` adds conditions on the whole Match and the
builder ``build(match, rewriter)``, which returns the Values replacing the root's outputs (a
Value, a list, or ``rewriter.fail("why")`` to decline). The rewriter adds nodes right before the
root, each carrying ``merge_provenance`` of all the matched nodes (inner ones first); after the replacement, matched
nodes and bound constants that nothing reads any more are erased, and graph outputs keep their
names.

``apply_patterns(graph, patterns)`` runs a worklist over the graph and its subgraphs: each node
is tried against the patterns whose root op is its op (highest ``benefit`` first), and after a
rewrite the nodes it created and the readers downstream of every changed value (as deep as the
deepest pattern) are queued again, until nothing fires or ``max_iterations`` rounds have run.

Example (a plugin's pass fusing ``relu(conv(x, w, b))`` into ``fused.conv``)::

    import attrs
    from qir.ir.types import DType
    from qir.passes.pattern import Const, Op, Pattern, Var, apply_patterns
    from qir.passes.registry import Pass, register_pass

    def fuse(m, rw):
        conv = m.node("conv")
        if conv.output.type.dtype != DType.FLOAT32:
            return rw.fail("only float32 convs")        # declined: nothing changes
        # the new node goes right before the relu, its provenance = conv's + relu's
        return rw.op("fused.conv", [m["x"], m["w"], m["b"]], {**conv.attrs, "activation": "relu"})

    CONV_RELU = Pattern(
        "conv-relu",
        Op("nn.relu",
           Op("nn.conv", Var("x"), Const("w", where=lambda w: w.ndim == 4), Var("b", optional=True),
              name="conv", attrs={"group": 1}, single_use=True)),
        fuse,
        where=[("the conv has a static shape", lambda m: m.node("conv").output.type.shape is not None)],
    )

    @register_pass
    @attrs.define
    class FuseConvRelu(Pass):
        \"\"\"Fuse Relu into the Conv before it.\"\"\"
        name = "my-conv-relu"
        opt_level = 2

        def run(self, graph, ctx) -> bool:
            return bool(apply_patterns(graph, [CONV_RELU]))

Why did a pattern not fire? ``CONV_RELU.explain(node)`` returns the first failed condition
(``"input 0: %t is used 2 times (single_use)"``...) or ``None`` when it matches, and
``apply_patterns(..., trace=print)`` reports every attempt.
"""

from __future__ import annotations

import collections
from typing import Any, Callable, Iterable, Sequence

import attrs
import numpy as np

from qir.errors import QirError
from qir.ir.graph import Graph, Node, Value, merge_provenance
from qir.ir.opdef import get_op

Predicate = Callable[[Any], bool]


# -- value patterns ------------------------------------------------------------------------

class ValuePattern:
    """Base of the things that match one Value (an input of a node, or the root's output)."""

    def depth(self) -> int:
        return 0


class Var(ValuePattern):
    """Any Value (or, when ``optional``, a missing input), bound to ``name``."""

    def __init__(self, name: str | None = None, *, optional: bool = False, where: Predicate | None = None):
        self.name = name
        self.optional = optional
        self.where = where

    def _check(self, value: Value) -> str | None:
        if self.where is not None and not self.where(value):
            return f"%{value.name} fails the condition on {self.describe()}"
        return None

    def describe(self) -> str:
        return f"${self.name}" if self.name else "_"

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r})"


class Const(Var):
    """A constant Value (``where`` sees its numpy array), bound to ``name``."""

    def _check(self, value: Value) -> str | None:
        if value.const is None:
            return f"%{value.name} is not a constant ({self.describe()})"
        if self.where is not None and not self.where(value.const):
            return f"constant %{value.name} fails the condition on {self.describe()}"
        return None


class Op(ValuePattern):
    """A Value produced by a node of op ``op`` whose inputs match ``inputs``."""

    def __init__(self, op: str | Sequence[str] | None, *inputs: ValuePattern, name: str | None = None,
                 attrs: dict[str, Any] | None = None, where: Predicate | None = None,
                 single_use: bool = False, commutative: bool = False, output: int = 0):
        self.ops = None if op is None else ((op,) if isinstance(op, str) else tuple(op))
        self.inputs = tuple(inputs)
        self.name = name
        self.attrs = dict(attrs or {})
        self.where = where
        self.single_use = single_use
        self.commutative = commutative
        self.output = output
        if commutative and len(inputs) != 2:
            raise QirError(f"pattern Op({op!r}): commutative needs exactly two inputs")

    def depth(self) -> int:
        return 1 + max((p.depth() for p in self.inputs), default=0)

    def describe(self) -> str:
        ops = "|".join(self.ops) if self.ops else "*"
        return f"{ops}" + (f" @{self.name}" if self.name else "")

    def __repr__(self) -> str:
        return f"Op({self.describe()})"


# -- matches -------------------------------------------------------------------------------

@attrs.define
class Match:
    """A successful match: the matched nodes (root first) and the bound Values and nodes."""

    pattern: "Pattern"
    root: Node
    nodes: list[Node] = attrs.field(factory=list)
    values: dict[str, Value | None] = attrs.field(factory=dict)
    named: dict[str, Node] = attrs.field(factory=dict)

    def __getitem__(self, name: str) -> Value | None:
        """The Value bound to ``name`` (None for a missing optional input)."""
        return self.values[name]

    def node(self, name: str) -> Node:
        """The node an ``Op(..., name=name)`` matched."""
        return self.named[name]

    def attrs(self, name: str) -> dict[str, Any]:
        """The resolved attributes (defaults filled in) of the node named ``name``."""
        node = self.named[name]
        return get_op(node.op).resolve_attrs(node.attrs)

    def const(self, name: str) -> np.ndarray | None:
        """The array of the constant bound to ``name`` (None when missing or not constant)."""
        value = self.values.get(name)
        return None if value is None else value.const


class _NoMatch(Exception):
    def __init__(self, reason: str):
        self.reason = reason


class _State:
    """Bindings during one match attempt; ``copy`` for backtracking over commutative inputs."""

    __slots__ = ("values", "named", "nodes", "pinned")

    def __init__(self, pinned):
        self.values: dict[str, Value | None] = {}
        self.named: dict[str, Node] = {}
        self.nodes: list[Node] = []
        self.pinned = pinned

    def copy(self) -> "_State":
        other = _State(self.pinned)
        other.values, other.named, other.nodes = dict(self.values), dict(self.named), list(self.nodes)
        return other

    def restore(self, other: "_State") -> None:
        self.values, self.named, self.nodes = other.values, other.named, other.nodes


def _is_pinned(value: Value, pinned) -> bool:
    if pinned is not None:
        return id(value) in pinned
    graph = value.graph
    return graph is not None and any(v is value for g in graph.root._graph_tree() for v in g.outputs)


def _bind(state: _State, name: str | None, value: Value | None) -> None:
    if name is None:
        return
    if name in state.values and state.values[name] is not value:
        raise _NoMatch(f"${name} would bind two different values")
    state.values[name] = value


def _match_value(pat: ValuePattern, value: Value | None, state: _State, root: Node) -> None:
    if isinstance(pat, Op):
        if value is None:
            raise _NoMatch(f"input is missing, pattern wants {pat.describe()}")
        node = value.producer
        if node is None or node.graph is not root.graph:
            raise _NoMatch(f"%{value.name} is not produced by a node of the root's graph "
                           f"(pattern wants {pat.describe()})")
        if value.index != pat.output:
            raise _NoMatch(f"%{value.name} is output {value.index} of {node.name}, pattern wants output {pat.output}")
        if pat.single_use:
            n = len(value.uses)
            if n != 1 or _is_pinned(value, state.pinned):
                what = "a graph output" if n == 1 else f"used {n} times"
                raise _NoMatch(f"%{value.name} is {what} (single_use)")
        _match_node(pat, node, state, root)
        return
    assert isinstance(pat, Var)
    if value is None:
        if not pat.optional:
            raise _NoMatch(f"input is missing, pattern wants {pat.describe()}")
        _bind(state, pat.name, None)
        return
    reason = pat._check(value)
    if reason:
        raise _NoMatch(reason)
    _bind(state, pat.name, value)


def _match_node(pat: Op, node: Node, state: _State, root: Node) -> None:
    where = f"node {node.name} ({node.op})"
    if pat.ops is not None and node.op not in pat.ops:
        raise _NoMatch(f"{where} is not {pat.describe()}")
    if any(n is node for n in state.nodes):
        raise _NoMatch(f"{where} would be matched twice")
    inputs = list(node.inputs)
    if len(inputs) > len(pat.inputs) and pat.inputs:
        raise _NoMatch(f"{where} has {len(inputs)} inputs, pattern {pat.describe()} takes {len(pat.inputs)}")
    inputs += [None] * (len(pat.inputs) - len(inputs))
    if pat.attrs:
        resolved = get_op(node.op).resolve_attrs(node.attrs)
        for key, want in pat.attrs.items():
            have = resolved.get(key)
            ok = want(have) if callable(want) else _attr_equal(have, want)
            if not ok:
                raise _NoMatch(f"{where}: attribute {key}={have!r} " +
                               ("fails its condition" if callable(want) else f"is not {want!r}"))
    if pat.where is not None and not pat.where(node):
        raise _NoMatch(f"{where} fails the condition of {pat.describe()}")
    state.nodes.append(node)
    if pat.name is not None:
        if pat.name in state.named and state.named[pat.name] is not node:
            raise _NoMatch(f"@{pat.name} would name two nodes")
        state.named[pat.name] = node
    orders = [inputs[:len(pat.inputs)]]
    if pat.commutative:
        orders.append(orders[0][::-1])
    saved, last = state.copy(), None
    for k, order in enumerate(orders):
        try:
            for i, (sub, value) in enumerate(zip(pat.inputs, order)):
                try:
                    _match_value(sub, value, state, root)
                except _NoMatch as exc:
                    raise _NoMatch(f"{where} input {i if k == 0 else 1 - i}: {exc.reason}") from None
            return
        except _NoMatch as exc:
            last = exc
            state.restore(saved.copy())
    raise last


def _attr_equal(have: Any, want: Any) -> bool:
    if isinstance(want, (list, tuple)):
        return isinstance(have, (list, tuple)) and tuple(have) == tuple(want)
    return have == want


# -- patterns and the rewriter -------------------------------------------------------------

Condition = Callable[[Match], bool] | tuple[str, Callable[[Match], bool]]


class Pattern:
    """A root value pattern, conditions on the whole match, and a replacement builder."""

    def __init__(self, name: str, root: Op, build: Callable[[Match, "Rewriter"], Any], *,
                 where: Condition | Sequence[Condition] | None = None, benefit: int = 1, doc: str = ""):
        if not isinstance(root, Op):
            raise QirError(f"pattern {name!r}: the root must be an Op pattern")
        self.name = name
        self.root = root
        self.build = build
        conds = [] if where is None else ([where] if callable(where) or isinstance(where, tuple) else list(where))
        self.conditions = [c if isinstance(c, tuple) else (getattr(c, "__doc__", None) or c.__name__, c)
                           for c in conds]
        self.benefit = benefit
        self.doc = doc

    @property
    def root_ops(self) -> tuple[str, ...] | None:
        return self.root.ops

    def depth(self) -> int:
        return self.root.depth()

    def match(self, node: Node, pinned: dict | None = None) -> Match | None:
        """The Match rooted at ``node``, or None."""
        result = self._try(node, pinned)
        return result if isinstance(result, Match) else None

    def explain(self, node: Node) -> str | None:
        """Why the pattern does not match at ``node`` (None when it does)."""
        result = self._try(node, None)
        return None if isinstance(result, Match) else result

    def _try(self, node: Node, pinned) -> Match | str:
        state = _State(pinned)
        if self.root.output >= len(node.outputs):
            return f"node {node.name} ({node.op}) has no output {self.root.output}"
        try:
            _match_node(self.root, node, state, node)
        except _NoMatch as exc:
            return exc.reason
        m = Match(self, node, state.nodes, state.values, state.named)
        for text, cond in self.conditions:
            if not cond(m):
                return f"condition failed: {text}"
        return m

    def __repr__(self) -> str:
        return f"Pattern({self.name!r}, root={self.root.describe()})"


class Rewriter:
    """What a builder uses to make the replacement: nodes before the root, with merged provenance."""

    def __init__(self, match: Match):
        self.match = match
        self.graph: Graph = match.root.graph
        # inner (earlier) nodes first: roughly the source model's order
        self.provenance = merge_provenance(reversed(match.nodes))
        self.created: list[Node] = []
        self.constants: list[Value] = []
        self.reason: str | None = None

    def add(self, op: str, inputs: Sequence[Value | None], attrs: dict[str, Any] | None = None,
            *, name: str | None = None, **kwargs) -> Node:
        """Add a node (inferred output types) right before the root; returns the Node."""
        node = self.graph.add_node(op, list(inputs), attrs, name=name, provenance=self.provenance,
                                   before=self.match.root, **kwargs)
        self.created.append(node)
        return node

    def op(self, op: str, inputs: Sequence[Value | None], attrs: dict[str, Any] | None = None,
           **kwargs) -> Value:
        """Add a one-output node; returns its output Value."""
        return self.add(op, inputs, attrs, **kwargs).output

    def constant(self, array, name: str | None = None) -> Value:
        """A new constant of the root's graph."""
        value = self.graph.add_constant(np.asarray(array), name=name)
        self.constants.append(value)
        return value

    def fail(self, reason: str) -> None:
        """Decline the rewrite (return this from the builder); ``reason`` goes to the trace."""
        self.reason = reason
        return None

    def _rollback(self) -> None:
        for node in reversed(self.created):
            for out in node.outputs:
                for use in list(out.uses):
                    use.node.set_input(use.index, None)
            self.graph.erase_node(node)
        for value in self.constants:
            if not value.uses:
                self.graph.erase_constant(value)


# -- the driver ----------------------------------------------------------------------------

@attrs.define
class ApplyResult:
    """What ``apply_patterns`` did: rewrites per pattern, rounds run, and whether it converged."""

    rewrites: collections.Counter = attrs.field(factory=collections.Counter)
    rounds: int = 0
    converged: bool = True

    @property
    def count(self) -> int:
        return sum(self.rewrites.values())

    def __bool__(self) -> bool:
        return self.count > 0


def apply_patterns(graph: Graph, patterns: Iterable[Pattern], *, max_iterations: int = 10,
                   trace: Callable[[str], None] | None = None) -> ApplyResult:
    """Apply ``patterns`` greedily to ``graph`` and its subgraphs until none fires.

    One round visits every queued node once; a rewrite queues the new nodes and the readers
    downstream of the changed values for the next round. After ``max_iterations`` rounds the
    driver stops with ``converged=False``. ``trace`` receives a line for every attempt (why a
    pattern did not fire, or that it fired). The result is truthy when anything changed.
    """
    patterns = list(patterns)
    by_op: dict[str, list[Pattern]] = collections.defaultdict(list)
    wildcard: list[Pattern] = []
    for p in patterns:
        for name in p.root_ops or ():
            by_op[name].append(p)
        if p.root_ops is None:
            wildcard.append(p)
    for lst in by_op.values():
        lst.sort(key=lambda p: -p.benefit)
    wildcard.sort(key=lambda p: -p.benefit)
    depth = max((p.depth() for p in patterns), default=1)
    # Values that graph outputs name (id → the value and the graphs returning it): they are
    # never single-use, keep their names, and replacing them rewrites those output lists.
    pinned: dict[int, tuple[Value, list[Graph]]] = {}
    for g in graph._graph_tree():
        for v in g.outputs:
            pinned.setdefault(id(v), (v, []))[1].append(g)
    result = ApplyResult()
    current = list(graph.walk())
    queued = set(current)
    while current:
        if result.rounds >= max_iterations:
            result.converged = False
            if trace:
                trace(f"stopped after {max_iterations} rounds with {len(current)} nodes queued")
            break
        result.rounds += 1
        following: list[Node] = []
        for node in current:
            queued.discard(node)
            if node.graph is None:
                continue  # erased by an earlier rewrite
            candidates = by_op.get(node.op, ())
            if wildcard:
                candidates = sorted([*candidates, *wildcard], key=lambda p: -p.benefit)
            for pat in candidates:
                touched = _try_rewrite(pat, node, pinned, trace)
                if touched is None:
                    continue
                result.rewrites[pat.name] += 1
                for n in _downstream(touched, depth):
                    if n not in queued:
                        queued.add(n)
                        following.append(n)
                break
        current = following
    return result


def _try_rewrite(pat: Pattern, node: Node, pinned: dict, trace) -> list | None:
    """Match and rewrite; None when it did not fire, else the new nodes and changed values."""
    found = pat._try(node, pinned)
    if not isinstance(found, Match):
        if trace:
            trace(f"{pat.name} @ {node.name}: no match: {found}")
        return None
    m = found
    rw = Rewriter(m)
    out = pat.build(m, rw)
    if out is None:
        rw._rollback()
        if trace:
            trace(f"{pat.name} @ {node.name}: declined: {rw.reason or 'the builder returned None'}")
        return None
    new_values = [out] if isinstance(out, Value) else list(out)
    root = m.root
    if len(new_values) != len(root.outputs):
        rw._rollback()
        raise QirError(f"pattern {pat.name!r} at node {root.name}: the builder gave {len(new_values)} "
                       f"values for {len(root.outputs)} outputs")
    changed: list[Value] = []
    for old, new in zip(root.outputs, new_values):
        if new is None or new is old:
            if new is None and (old.uses or id(old) in pinned):
                rw._rollback()
                raise QirError(f"pattern {pat.name!r} at node {root.name}: no replacement for "
                               f"%{old.name}, which is still used")
            continue
        _replace(rw, root, old, new, pinned)
        changed.append(new)
    # Erase the matched nodes nothing reads any more (root first, so inner ones die after it).
    for matched in m.nodes:
        if matched.graph is not None and not any(o.uses or id(o) in pinned for o in matched.outputs):
            for v in matched.inputs:
                if v is not None:
                    changed.append(v)
            matched.graph.erase_node(matched)
    for value in m.values.values():
        if (value is not None and value.const is not None and not value.uses and id(value) not in pinned
                and value.graph is not None and value.graph.constants.get(value.name) is value):
            value.graph.erase_constant(value)
    if trace:
        trace(f"{pat.name} @ {node.name}: fired, {len(rw.created)} new node(s)")
    return [*rw.created, *changed]


def _replace(rw: Rewriter, root: Node, old: Value, new: Value, pinned: dict) -> None:
    graph = rw.graph
    # (include_outputs=False: the pinned table knows which graphs return ``old``; scanning the
    # whole graph tree per rewrite would make the driver quadratic.)
    if id(old) in pinned:
        # A graph output keeps its name: rename a fresh replacement, else an identity carries it.
        fresh = new.producer is not None and new.producer in rw.created and id(new) not in pinned
        if not fresh:
            new = rw.op("tensor.identity", [new])
        graph.replace_all_uses(old, new, include_outputs=False)
        _, returning = pinned.pop(id(old))
        for g in returning:
            g.outputs = [new if v is old else v for v in g.outputs]
        name = old.name
        graph.rename(old, f"{name}_replaced")
        graph.rename(new, name)
        pinned[id(new)] = (new, returning)
    else:
        graph.replace_all_uses(old, new, include_outputs=False)
        if new.producer is not None and new.producer in rw.created and old.producer is not None:
            # The rewrite's result keeps the source tensor's name, so encodings files, profiles
            # and the accuracy debugger still speak the model's tensor names.
            name = old.name
            graph.rename(old, f"{name}_replaced")
            graph.rename(new, name)


def _downstream(touched: list, depth: int) -> list[Node]:
    """Touched nodes, and the readers of touched values (and nodes' outputs) ``depth`` levels down."""
    found: dict[Node, None] = {}
    frontier: list[Value] = []
    for item in touched:
        if isinstance(item, Node):
            if item.graph is not None:
                found[item] = None
            frontier.extend(item.outputs)
        elif isinstance(item, Value):
            frontier.append(item)
    for _ in range(max(depth, 1)):
        nxt: list[Value] = []
        for value in frontier:
            for use in value.uses:
                if use.node not in found and use.node.graph is not None:
                    found[use.node] = None
                    nxt.extend(use.node.outputs)
        frontier = nxt
    return list(found)
