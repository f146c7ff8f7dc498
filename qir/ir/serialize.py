"""Binary save/load of a graph with its weights (placeholder until the text form lands)."""

from __future__ import annotations

import pickle

from qir.ir.graph import Graph


def dumps(graph: Graph) -> bytes:
    return pickle.dumps(graph)


def loads(data: bytes) -> Graph:
    return pickle.loads(data)
