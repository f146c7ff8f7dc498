"""``memory-report``: peak activation memory and arena size of the graph as it stands.

It changes nothing: it plans the graph's memory with the static planner every target uses
(qir/lowering/memory.py) and reports naive bytes (one buffer per value), peak live bytes and the
planned arena, so a pipeline shows the effect of its rewrites::

    qirc opt model.onnx --passes "memory-report{label=before},fuse-epilogue,dce,memory-report{label=after}"

Symbolic dims are bound with ``dims`` (``memory-report{dims=N:1,seq:128}``); values whose size
is still unknown are counted as unplannable.
"""

from __future__ import annotations

import sys

import attrs

from qir.errors import OptionError
from qir.lowering.memory import DEFAULT_ALIGNMENT, MemoryPlan, plan_memory
from qir.passes.registry import Pass, register_pass


def _parse_dims(text) -> dict[str, int]:
    """``"N:1,seq:128"`` (or a dict) → ``{"N": 1, "seq": 128}``."""
    if isinstance(text, dict):
        return {str(k): int(v) for k, v in text.items()}
    if isinstance(text, (tuple, list)):
        text = ",".join(text)
    dims = {}
    for part in filter(None, (p.strip() for p in str(text).split(","))):
        name, sep, size = part.partition(":")
        if not sep or not size.strip().isdigit():
            raise OptionError(f"memory-report: bad dims entry {part!r}; write dims=NAME:SIZE,NAME:SIZE")
        dims[name.strip()] = int(size)
    return dims


@register_pass
@attrs.define(slots=False)  # ``plans`` is state, not an option: kept out of the attrs fields
class MemoryReport(Pass):
    """Report peak activation memory and the planned arena size (naive vs planned); changes nothing."""

    name = "memory-report"
    opt_level = 3
    label: str = ""
    dims: str = ""
    alignment: int = DEFAULT_ALIGNMENT
    quiet: bool = False

    def __attrs_post_init__(self) -> None:
        #: Every plan this instance made, in order (a pipeline holding the instance reads them back).
        self.plans: list[MemoryPlan] = []

    def run(self, graph, ctx) -> bool:
        plan = plan_memory(graph, _parse_dims(self.dims), alignment=int(self.alignment))
        self.plans.append(plan)
        records = getattr(ctx, "records", None)
        if isinstance(records, dict):
            records.setdefault(self.name, []).append((self.label, plan))
        if not self.quiet:
            head = f"memory-report{f' [{self.label}]' if self.label else ''} @{graph.name}:"
            print(head + "\n  " + plan.summary().replace("\n", "\n  "), file=sys.stderr)
        return False
