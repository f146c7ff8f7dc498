"""Model statistics from a Graph: op histogram, parameters, MACs/FLOPs per node, input/output specs.

Counting rules:

* Parameters are the graph's constants (subgraphs included): their element count and bytes.
  A splat constant (one value broadcast, a zero-stride view: :func:`qir.ir.printer.splat`) counts
  at its logical size, like the weights it stands for, though it holds one element in memory.
* A multiply-accumulate op (conv, conv_transpose, matmul, gemm and their integer/quantized forms)
  has a rule in :data:`MAC_RULES` giving its MACs from the types of its inputs and outputs; its
  FLOPs are 2 × MACs, plus one per output element when it adds a bias.
* Every other op costs one FLOP per output element and no MACs (a reshape is counted like an add:
  cheap ops stay visible, and the rule is simple enough to predict).
* A shape that is unknown (unknown rank, or a data-dependent dim) makes that node's count unknown
  (None); totals add up the known ones and :attr:`ModelStats.unknown_nodes` says how many were not.
* Symbolic dims ("N", "seq") count as ``symbol_value`` (1 by default, i.e. "per sample"); the
  symbols taken that way are listed in :attr:`ModelStats.assumed_symbols`. Fix them for real with
  :func:`qir.ir.shapes.bind_input_dims`.

New ops add their rule with :func:`mac_rule`::

    @mac_rule("nn.my_conv")
    def _my_conv(node, count):          # count: a Counter (numel/shape of Values)
        return count.numel(node.outputs[0]) * 9, False   # (MACs, adds a bias)
"""

from __future__ import annotations

import collections
import math
from typing import Callable, Iterable

import attrs
import numpy as np

from qir.ir.graph import Graph, Node, Value
from qir.ir.types import Dim, TensorType, Type

#: A MAC rule: (node, Counter) → (MACs, whether it adds a bias), or None when a shape is unknown.
MacRule = Callable[[Node, "Counter"], "tuple[int, bool] | None"]

MAC_RULES: dict[str, MacRule] = {}


def mac_rule(*ops: str) -> Callable[[MacRule], MacRule]:
    """Decorator: register the MAC rule of one or more ops (a second rule for an op is an error)."""

    def wrap(rule: MacRule) -> MacRule:
        for name in ops:
            if name in MAC_RULES:
                raise ValueError(f"MAC rule for {name} registered twice")
            MAC_RULES[name] = rule
        return rule

    return wrap


@attrs.frozen
class NodeStats:
    """The cost of one node; ``macs``/``flops`` are None when its shapes are unknown."""

    name: str
    op: str
    macs: int | None
    flops: int | None


@attrs.frozen
class IOSpec:
    """A graph input or output: its name and type."""

    name: str
    type: Type | None


@attrs.frozen
class ModelStats:
    """Everything ``qirc inspect`` shows about a graph."""

    name: str
    op_counts: dict[str, int]
    num_params: int
    param_bytes: int
    nodes: tuple[NodeStats, ...]
    inputs: tuple[IOSpec, ...]
    outputs: tuple[IOSpec, ...]
    assumed_symbols: tuple[str, ...]

    @property
    def total_macs(self) -> int:
        """MACs of the nodes whose count is known."""
        return sum(n.macs for n in self.nodes if n.macs is not None)

    @property
    def total_flops(self) -> int:
        return sum(n.flops for n in self.nodes if n.flops is not None)

    @property
    def unknown_nodes(self) -> int:
        """How many nodes have an unknown count (left out of the totals)."""
        return sum(1 for n in self.nodes if n.flops is None)

    def by_op(self) -> dict[str, tuple[int, int | None, int | None]]:
        """op → (node count, MACs, FLOPs); a count is None if any node of that op is unknown."""
        table: dict[str, list] = {}
        for n in self.nodes:
            row = table.setdefault(n.op, [0, 0, 0])
            row[0] += 1
            row[1] = None if row[1] is None or n.macs is None else row[1] + n.macs
            row[2] = None if row[2] is None or n.flops is None else row[2] + n.flops
        return {op: tuple(row) for op, row in table.items()}


class Counter:
    """Element counts of values, taking symbolic dims as ``symbol_value`` and noting which."""

    def __init__(self, symbol_value: int | None = 1):
        self.symbol_value = symbol_value
        self.assumed: set[str] = set()

    def dim(self, d: Dim) -> int | None:
        if isinstance(d, int):
            return d
        if self.symbol_value is None or d == "?":
            return None
        self.assumed.add(d)
        return self.symbol_value

    def shape(self, value: Value | None) -> list[int] | None:
        """The dims of ``value`` as ints, or None when unknown."""
        t = None if value is None else value.type
        if not isinstance(t, TensorType) or t.shape is None:
            return None
        dims = [self.dim(d) for d in t.shape]
        return None if any(d is None for d in dims) else dims

    def numel(self, value: Value | None) -> int | None:
        dims = self.shape(value)
        return None if dims is None else math.prod(dims)


# -- MAC rules -----------------------------------------------------------------------------

def _weighted(out_index: int, weight_index: int, bias_index: int | None):
    """The conv rule: MACs = elements of output ``out_index`` × prod(weight.shape[1:]),
    i.e. N·Cout·prod(out spatial) × Cin/groups·prod(kernel)."""

    def rule(node: Node, count: Counter):
        out = count.numel(node.outputs[out_index])
        w = count.shape(_input(node, weight_index))
        if out is None or w is None or len(w) < 2:
            return None
        return out * math.prod(w[1:]), _input(node, bias_index) is not None

    return rule


def _input(node: Node, index: int | None) -> Value | None:
    if index is None or index >= len(node.inputs):
        return None
    return node.inputs[index]


# Conv: weight [Cout, Cin/groups, k...]; per output element Cin/groups·prod(k) MACs.
mac_rule("nn.conv", "nn.deform_conv")(_weighted(0, 1, 2))
mac_rule("quant.conv_integer")(_weighted(0, 1, None))
mac_rule("quant.qlinear_conv")(_weighted(0, 3, 8))


@mac_rule("nn.conv_transpose")
def _conv_transpose(node: Node, count: Counter):
    """Weight [Cin, Cout/groups, k...]: every input element scatters into Cout/groups·prod(k)."""
    x = count.numel(_input(node, 0))
    w = count.shape(_input(node, 1))
    if x is None or w is None or len(w) < 2:
        return None
    return x * math.prod(w[1:]), _input(node, 2) is not None


def _matmul_rule(a_index: int):
    def rule(node: Node, count: Counter):
        out = count.numel(node.outputs[0])
        a = count.shape(_input(node, a_index))
        if out is None or not a:
            return None
        return out * a[-1], False  # [..., M, K] @ [..., K, N]: K MACs per output element

    return rule


mac_rule("linalg.matmul", "linalg.matmul_integer")(_matmul_rule(0))
mac_rule("quant.qlinear_matmul")(_matmul_rule(0))


@mac_rule("linalg.gemm")
def _gemm(node: Node, count: Counter):
    """Y[M,N] = alpha·op(A)·op(B) + beta·C, with K the contracted dim of op(A)."""
    out = count.numel(node.outputs[0])
    a = count.shape(_input(node, 0))
    if out is None or a is None or len(a) != 2:
        return None
    k = a[0] if node.attrs.get("transA", 0) else a[1]
    return out * k, _input(node, 2) is not None


# -- statistics ----------------------------------------------------------------------------

def node_stats(node: Node, count: Counter) -> NodeStats:
    """MACs and FLOPs of one node (see the module docstring for the rules)."""
    rule = MAC_RULES.get(node.op)
    if rule is not None:
        found = rule(node, count)
        if found is None:
            return NodeStats(node.name, node.op, None, None)
        macs, bias = found
        flops = 2 * macs
        if bias:
            out = count.numel(node.outputs[0])
            flops = None if out is None else flops + out
        return NodeStats(node.name, node.op, macs, flops)
    sizes = [count.numel(v) for v in node.outputs if isinstance(v.type, TensorType)]
    flops = None if any(s is None for s in sizes) else sum(sizes)
    return NodeStats(node.name, node.op, 0, flops)


def _constants(graph: Graph) -> Iterable[Value]:
    yield from graph.constants.values()
    for node in graph.nodes:
        for sub in node.subgraphs():
            yield from _constants(sub)


def model_stats(graph: Graph, *, symbol_value: int | None = 1) -> ModelStats:
    """Statistics of ``graph`` (subgraphs included); symbolic dims count as ``symbol_value``
    (None: nodes with symbolic shapes are reported as unknown)."""
    count = Counter(symbol_value)
    nodes = tuple(node_stats(n, count) for n in graph.walk())
    consts = [np.asarray(v.const) for v in _constants(graph)]
    ops = collections.Counter(n.op for n in nodes)
    return ModelStats(
        name=graph.name,
        op_counts=dict(sorted(ops.items(), key=lambda kv: (-kv[1], kv[0]))),
        num_params=sum(int(c.size) for c in consts),
        param_bytes=sum(int(c.nbytes) for c in consts),
        nodes=nodes,
        inputs=tuple(IOSpec(v.name, v.type) for v in graph.inputs),
        outputs=tuple(IOSpec(v.name, v.type) for v in graph.outputs),
        assumed_symbols=tuple(sorted(count.assumed)),
    )
