"""ReferenceTarget: every registered op, run by its numpy kernel; the oracle for other targets."""

from __future__ import annotations

from typing import Any

from qir.ir import serialize
from qir.ir.graph import Graph, Node
from qir.ir.opdef import has_op
from qir.targets.base import CompileOptions, Executable, Support, Target, register_target
from qir.ir.interpreter import Hook, Interpreter


class ReferenceExecutable(Executable):
    def __init__(self, graph: Graph, hook: Hook | None = None):
        self.graph = graph
        self.interpreter = Interpreter(graph, hook)

    def run(self, inputs: list[Any]) -> list[Any]:
        return self.interpreter.run_graph(self.graph, list(inputs), {})


@register_target
class ReferenceTarget(Target):
    """Runs any graph whose ops have reference kernels. Its context binary is the serialized graph."""

    name = "reference"

    def supports(self, node: Node) -> Support:
        return Support(True) if has_op(node.op) else Support(False, f"no op definition for {node.op}")

    def cost(self, node: Node) -> float:
        return 100.0  # an interpreter: the slowest choice

    def compile(self, graph: Graph, options: CompileOptions) -> bytes:
        return serialize.dumps(graph)

    def load(self, blob: bytes, options: CompileOptions) -> Executable:
        return ReferenceExecutable(serialize.loads(blob))
