"""The interpreter: runs any Graph with the ops' own numpy kernels (the reference target, and
passes that must execute a graph: calibration, the accuracy debugger).

It is the oracle every other target is compared with. ``hook(value, array)`` sees every value
as it is computed (graph inputs, constants and node outputs, subgraphs included), which is how the
accuracy debugger captures intermediate tensors.
"""

from __future__ import annotations

import functools
from typing import Any, Callable


from qir.errors import ExecutionError, QirError
from qir.ir.graph import Graph, Value
from qir.ir.opdef import OpDef, call_kernel, conform, get_op

Hook = Callable[[Value, Any], None]


class Interpreter:
    """Runs a graph node by node; values are numpy arrays, lists (sequences) or None (optionals)."""

    def __init__(self, graph: Graph, hook: Hook | None = None):
        self.graph = graph
        self.hook = hook
        self._ops: dict[str, OpDef] = {n.op: get_op(n.op) for n in graph.walk()}

    def run(self, feeds: dict[str, Any]) -> list[Any]:
        """Values of the graph outputs, in order, for ``feeds`` keyed by input name."""
        return self.run_graph(self.graph, [feeds[v.name] for v in self.graph.inputs], {})

    def run_graph(self, graph: Graph, args: list[Any], outer: dict[int, Any]) -> list[Any]:
        env: dict[int, Any] = dict(outer)
        for value, arg in zip(graph.inputs, args):
            self._bind(env, value, arg)
        for value in graph.constants.values():
            self._bind(env, value, value.const)
        for node in graph.nodes:
            opdef = self._ops[node.op]
            inputs = [None if v is None else env[id(v)] for v in node.inputs]
            # Subgraphs (If/Loop/Scan bodies) see this graph's values as their outer scope.
            run_sub = functools.partial(self._run_subgraph, outer=env) if opdef.needs_runner else None
            try:
                results = call_kernel(opdef, node, inputs, run_sub)
            except QirError:
                raise
            except Exception as exc:
                raise ExecutionError(f"node {node.name} ({node.op}) failed: {type(exc).__name__}: {exc}") from exc
            if len(results) < len(node.outputs):
                raise ExecutionError(f"node {node.name} ({node.op}): kernel returned {len(results)} "
                                     f"values for {len(node.outputs)} outputs")
            for value, result in zip(node.outputs, results):
                self._bind(env, value, conform(value, result))
        return [env[id(v)] for v in graph.outputs]

    def _run_subgraph(self, graph: Graph, args: list[Any], outer: dict[int, Any]) -> list[Any]:
        return self.run_graph(graph, args, outer)

    def _bind(self, env: dict[int, Any], value: Value, array: Any) -> None:
        env[id(value)] = array
        if self.hook is not None:
            self.hook(value, array)

