"""Lowering: from the graph IR toward what targets execute (kernel-level IR, schedules).

``memory`` holds the static memory planner every target shares.
"""

from qir.lowering.memory import Buffer, MemoryPlan, plan_memory, run_with_plan

__all__ = ["Buffer", "MemoryPlan", "plan_memory", "run_with_plan"]
