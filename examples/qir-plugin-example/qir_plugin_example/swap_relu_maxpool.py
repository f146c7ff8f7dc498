"""``swap-relu-maxpool``: ``max_pool(relu(x))`` → ``relu(max_pool(x))``.

Both compute the same thing, because relu is monotonic (the max of relus is the relu of the
max), but the second applies relu to the pooled tensor: for a 2x2 pool, a quarter of the
elements. It is also the order that lets a later pass fuse the relu into whatever follows.
"""

from __future__ import annotations

import attrs

from qir.ir.graph import Graph, Node
from qir.passes.registry import Pass, register_pass


@register_pass  # registers it on import too, so tests can use it without installing the package
@attrs.define
class SwapReluMaxPool(Pass):
    """Move relu after max_pool (max_pool(relu(x)) -> relu(max_pool(x))): less work, same result."""

    name = "swap-relu-maxpool"
    opt_level = 2
    #: Rewrite at most this many places (-1: all); `swap-relu-maxpool{max-rewrites=1}` helps
    #: bisect which rewrite breaks a model.
    max_rewrites: int = -1

    def run(self, graph: Graph, ctx) -> bool:
        done = 0
        for g in _graphs(graph):  # the graph and its subgraphs (If branches, Loop bodies)
            for pool in list(g.nodes):  # a copy: rewrites edit g.nodes
                if 0 <= self.max_rewrites <= done:
                    return done > 0
                relu = self._match(g, pool)
                if relu is not None:
                    self._rewrite(g, relu, pool)
                    done += 1
        return done > 0

    @staticmethod
    def _match(graph: Graph, pool: Node) -> Node | None:
        """The relu feeding ``pool`` when the swap is safe, else None."""
        if pool.op != "nn.max_pool" or len(pool.outputs) != 1:  # the indices output would change
            return None
        relu = pool.inputs[0].producer
        if relu is None or relu.op != "nn.relu" or relu.graph is not graph:
            return None
        # The relu's output must feed only this pool (and not be a graph output): otherwise the
        # relu stays and the swap would add a node instead of moving one.
        value = relu.output
        if len(value.uses) != 1 or any(value is out for out in graph.outputs):
            return None
        return relu

    @staticmethod
    def _rewrite(graph: Graph, relu: Node, pool: Node) -> None:
        # New nodes carry the provenance of the nodes they stand for: the new pool is the old
        # pool, moved; the new relu is the old relu, moved.
        new_pool = graph.add_node("nn.max_pool", [relu.inputs[0]], pool.attrs, num_outputs=1,
                                  provenance=pool.provenance, before=pool)
        new_relu = graph.add_node("nn.relu", [new_pool.output], provenance=relu.provenance,
                                  after=new_pool)
        old = pool.output
        graph.replace_all_uses(old, new_relu.output)  # graph outputs included
        graph.erase_node(pool)
        graph.erase_node(relu)
        # Keep the value's name (a graph output must keep it): free it, then take it over.
        name = old.name
        graph.rename(old, name + ".replaced")
        graph.rename(new_relu.output, name)


def _graphs(graph: Graph):
    yield graph
    for node in list(graph.nodes):
        for sub in node.subgraphs():
            yield from _graphs(sub)
