"""The verifier: use-def consistency, acyclicity, op schemas and types, naming the node at fault."""

from __future__ import annotations

from qir.errors import QirError, VerificationError
from qir.ir.graph import Graph, Node, Use, Value
from qir.ir.types import SequenceType, OptionalType, TensorType


def topological_order(graph: Graph) -> list[Node]:
    """The graph's nodes in a stable topological order; a cycle raises naming its nodes."""
    local = {id(out): node for node in graph.nodes for out in node.outputs}
    order, state = [], {}
    for root in graph.nodes:
        if id(root) in state:
            continue
        stack = [(root, False)]
        while stack:
            node, done = stack.pop()
            if done:
                state[id(node)] = 2
                order.append(node)
                continue
            if state.get(id(node)) == 2:
                continue
            if state.get(id(node)) == 1:
                continue
            state[id(node)] = 1
            stack.append((node, True))
            for dep in reversed(_dependencies(node, local)):
                if state.get(id(dep)) == 1:
                    raise VerificationError(f"the graph @{graph.name} has a cycle through node "
                                            f"{dep.name} ({dep.op}) and {node.name} ({node.op})")
                if id(dep) not in state:
                    stack.append((dep, False))
    return order


def _dependencies(node: Node, local: dict) -> list[Node]:
    """Producers in this graph of the node's inputs, including values its subgraphs capture."""
    deps = [local[id(v)] for v in node.inputs if v is not None and id(v) in local]
    for sub in node.subgraphs():
        for inner in sub.walk():
            deps.extend(local[id(v)] for v in inner.inputs if v is not None and id(v) in local)
        deps.extend(local[id(v)] for v in sub.outputs if id(v) in local)
    return list(dict.fromkeys(deps))


def verify(graph: Graph, *, check_types: bool = True) -> None:
    """Raise VerificationError naming the first offending node if ``graph`` is malformed."""
    _verify_graph(graph, visible=set(), check_types=check_types)


def _verify_graph(graph: Graph, visible: set[int], check_types: bool) -> None:
    defined = set(visible)
    names: dict[str, Value] = {}

    def define(value: Value, what: str) -> None:
        if value.name in names and names[value.name] is not value:
            raise VerificationError(f"graph @{graph.name}: two values are named %{value.name} ({what})")
        names[value.name] = value
        defined.add(id(value))

    for value in graph.inputs:
        define(value, "input")
    for value in graph.constants.values():
        if value.const is None:
            raise VerificationError(f"graph @{graph.name}: constant %{value.name} holds no array")
        define(value, "constant")
    for node in graph.nodes:
        _verify_node(graph, node, defined, check_types)
        for sub in node.subgraphs():
            if sub.parent is not graph:
                raise VerificationError(f"node {node.name} ({node.op}): its subgraph @{sub.name} "
                                        f"does not name @{graph.name} as its parent")
            _verify_graph(sub, defined, check_types)
        for out in node.outputs:
            if out.producer is not node:
                raise VerificationError(f"node {node.name} ({node.op}): output %{out.name} names "
                                        f"another producer")
            define(out, f"output of {node.name}")
    for value in graph.outputs:
        if id(value) not in defined:
            raise VerificationError(f"graph @{graph.name}: output %{value.name} is not defined in it "
                                    f"or an enclosing graph")
    _verify_uses(graph)


def _verify_node(graph: Graph, node: Node, defined: set[int], check_types: bool) -> None:
    from qir.ir.opdef import get_op, infer_types

    where = f"node {node.name} ({node.op})"
    if node.graph is not graph:
        raise VerificationError(f"{where}: belongs to another graph")
    try:
        opdef = get_op(node.op)
    except QirError as exc:
        raise VerificationError(f"{where}: {exc.message}") from None
    for i, value in enumerate(node.inputs):
        if value is None:
            continue
        if id(value) not in defined:
            raise VerificationError(f"{where}: input {i} %{value.name} is used before it is defined "
                                    f"(or is not defined in this graph or an enclosing one)")
        if Use(node, i) not in value._uses:
            raise VerificationError(f"{where}: input {i} %{value.name} does not list the node as a user")
    n_in = len(node.inputs)
    if n_in < opdef.min_inputs() or (opdef.max_inputs() is not None and n_in > opdef.max_inputs()):
        raise VerificationError(f"{where}: takes {opdef.min_inputs()}..{opdef.max_inputs() or 'n'} "
                                f"inputs, got {n_in}")
    for i, name in enumerate(opdef.inputs[:n_in]):
        if not name.endswith(("?", "*")) and node.inputs[i] is None:
            raise VerificationError(f"{where}: required input {i} ({name}) is missing")
    opdef.resolve_attrs(node.attrs, f"{where}: ")
    if check_types:
        _check_types(node, infer_types(node, len(node.outputs)), where)


def _check_types(node: Node, inferred: list, where: str) -> None:
    for value, expected in zip(node.outputs, inferred):
        if not compatible(value.type, expected):
            raise VerificationError(f"{where}: output %{value.name} has type {value.type}, "
                                    f"but the op infers {expected}")


def compatible(actual, expected) -> bool:
    """Whether a stored type agrees with an inferred one (unknown and symbolic dims agree)."""
    if actual is None or expected is None:
        return True
    if type(actual) is not type(expected):
        return False
    if isinstance(actual, (SequenceType, OptionalType)):
        return compatible(actual.elem, expected.elem)
    assert isinstance(actual, TensorType)
    if actual.dtype != expected.dtype:
        return False
    if actual.shape is None or expected.shape is None:
        return True
    if len(actual.shape) != len(expected.shape):
        return False
    return all(a == e or isinstance(a, str) or isinstance(e, str) for a, e in zip(actual.shape, expected.shape))


def _verify_uses(graph: Graph) -> None:
    for value in graph.values():
        for use in value._uses:
            if use.node.graph is None or use.index >= len(use.node.inputs) or use.node.inputs[use.index] is not value:
                raise VerificationError(f"value %{value.name} lists a stale use by node {use.node.name}")
