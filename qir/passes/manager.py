"""PassManager and PassContext: run pipelines of passes with instruments.

A pipeline is a string (``"canonicalize,fold-constants,fuse-epilogue{max-ops=3},dce"``) or a
list of names, ``(name, options)`` pairs or Pass instances. ``PassContext`` carries the opt
level, disabled passes and instruments.
"""

from __future__ import annotations

import re
from typing import Any, Iterable, Sequence

import attrs

from qir.errors import OptionError
from qir.ir.graph import Graph
from qir.passes.registry import Pass, make_pass

PipelineSpec = "str | Sequence[str | tuple[str, dict] | Pass]"

_ITEM = re.compile(r"\s*([A-Za-z0-9_.-]+)\s*(?:\{([^{}]*)\})?\s*(?:,|$)")


def parse_pipeline(text: str) -> list[tuple[str, dict[str, str]]]:
    """``"a,b{k=v,k2=v2},c"`` → ``[("a", {}), ("b", {"k": "v", "k2": "v2"}), ("c", {})]``."""
    items, pos, text = [], 0, text.strip()
    while pos < len(text):
        m = _ITEM.match(text, pos)
        if m is None or m.end() == pos:
            raise OptionError(f"bad pipeline {text!r} at character {pos}: expected "
                              f"'name' or 'name{{option=value,...}}' separated by commas")
        options = {}
        for part in filter(None, (p.strip() for p in (m.group(2) or "").split(","))):
            key, eq, value = part.partition("=")
            if not eq:
                # A list value continues after a comma: "axes=1,2" → axes="1,2"
                if not options:
                    raise OptionError(f"bad option {part!r} for pass {m.group(1)!r}: expected key=value")
                last = next(reversed(options))
                options[last] += "," + part
                continue
            options[key.strip()] = value.strip()
        items.append((m.group(1), options))
        pos = m.end()
    return items


def resolve_pipeline(spec: Any) -> list[Pass]:
    """Pass instances for a pipeline string or list."""
    if isinstance(spec, str):
        spec = parse_pipeline(spec)
    passes = []
    for item in spec:
        if isinstance(item, Pass):
            passes.append(item)
        elif isinstance(item, str):
            passes.extend(resolve_pipeline(item) if "," in item or "{" in item else [make_pass(item)])
        else:
            name, options = item
            passes.append(make_pass(name, options))
    return passes


@attrs.define
class PassContext:
    """What every pass sees: opt level, disabled passes, options and instruments."""

    opt_level: int = 2
    disabled: frozenset[str] = attrs.field(factory=frozenset, converter=frozenset)
    verify_each: bool = False
    instruments: list[Any] = attrs.field(factory=list)


class PassManager:
    """Runs passes in order on a graph, honouring the context."""

    def __init__(self, passes: Iterable[Pass], ctx: PassContext | None = None):
        self.passes = list(passes)
        self.ctx = ctx or PassContext()

    def run(self, graph: Graph) -> Graph:
        from qir.ir.verifier import verify

        for p in self.passes:
            if p.name in self.ctx.disabled:
                continue
            p.run(graph, self.ctx)
            if self.ctx.verify_each:
                verify(graph)
        return graph
