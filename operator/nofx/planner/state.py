"""RunState: one pass of the planner over a pinned Run. It holds the plan (with its step order,
built once per plan), the pinned Agents and parameters, every step's status entry, and what the
operator observed; the modules beside it (attempts, fanout, children, stopping, progress) are
functions over it."""

from __future__ import annotations

from typing import Any

from nofx.api.agent import AgentSpec
from nofx.api.reasons import Reason
from nofx.api.run import TERMINAL_STEP_PHASES, StepStatus
from nofx.api.template import Step, TemplateSpec
from nofx.planner import graph
from nofx.planner.conditions import bounded, end_entry
from nofx.planner.facts import Decision, RunView, World
from nofx.planner.outputs import EMPTY_JOIN


class RunState:
    """Everything one decision about a started Run reads and changes."""

    def __init__(self, run: RunView, world: World, decision: Decision) -> None:
        self.run, self.world, self.decision = run, world, decision
        self.status = decision.status
        self.now = world.now
        pinned = self.status.pinned
        assert pinned is not None and pinned.template is not None
        self.plan = TemplateSpec.model_validate(pinned.template.spec)
        self.agents = {
            name: AgentSpec.model_validate(agent.spec)
            for name, agent in (pinned.agents or {}).items()
        }
        self.parameters = pinned.parameters or {}
        self.entries: dict[tuple[str, int | None], StepStatus] = {
            (entry.name, entry.index): entry for entry in self.status.steps or []
        }
        self.free_slots = dict(world.free_slots)
        self.child_runs_left = world.limits.max_runs - world.tree_size
        self.for_each_steps = {
            step.name for step in [*self.plan.steps, *(self.plan.finally_ or [])] if step.for_each
        }
        self.main_order = graph.execution_order(self.plan.steps)
        self.finally_order = graph.execution_order(self.plan.finally_ or [])

    def top(self, step: Step) -> StepStatus:
        key = (step.name, None)
        if key not in self.entries:
            self.entries[key] = StepStatus(name=step.name, phase="Pending")
        return self.entries[key]

    def top_by_name(self, name: str) -> StepStatus:
        return self.entries[(name, None)]

    def started(self, entry: StepStatus) -> bool:
        return bool(entry.attempts) or entry.child_run_name is not None or self.has_items(entry)

    def has_items(self, entry: StepStatus) -> bool:
        return any(name == entry.name and index is not None for name, index in self.entries)

    def approved(self, step_name: str) -> bool:
        return any(approval.step == step_name for approval in self.run.spec.approvals or [])

    def context(self, item: Any = None, index: int | None = None) -> dict[str, Any]:
        steps: dict[str, Any] = {
            name: {"outputs": entry.outputs or {}}
            for (name, entry_index), entry in self.entries.items()
            if entry_index is None and entry.phase == "Succeeded"
        }
        for name in self.for_each_steps & steps.keys():
            if not self.has_items(self.entries[(name, None)]):
                steps[name] = {"outputs": EMPTY_JOIN}
        context: dict[str, Any] = {"params": self.parameters, "steps": steps}
        if index is not None:
            context["item"], context["index"] = item, index
        return context

    def wait(self, entry: StepStatus, message: str, reason: Reason) -> None:
        entry.phase = "Waiting"
        entry.reason = reason
        entry.message = bounded(message)

    def end(
        self, entry: StepStatus, phase: str, message: str, reason: Reason | None = None
    ) -> None:
        end_entry(entry, self.now, phase, message, reason)

    def write_back(self) -> None:
        order = {
            (s.name, None): i for i, s in enumerate([*self.plan.steps, *(self.plan.finally_ or [])])
        }

        def position(key: tuple[str, int | None]) -> tuple[int, int]:
            name, index = key
            return order.get((name, None), len(order)), -1 if index is None else index

        self.status.steps = [self.entries[key] for key in sorted(self.entries, key=position)]
        tops = [e for (_, index), e in self.entries.items() if index is None]
        done = sum(1 for e in tops if e.phase in TERMINAL_STEP_PHASES)
        self.status.progress = f"{done}/{len(tops)}"
