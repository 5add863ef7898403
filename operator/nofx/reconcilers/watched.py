"""What the operator's own watches hold, which the reconcilers read: Runs, step Jobs, Agents,
Templates and namespaces' labels, and with Kueue, Kopf's index of Workloads. Made once at
startup; a test makes an empty one and fills what it needs through each part's listed() and
changed()."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from nofx.api.agent import AgentSpec
from nofx.api.template import TemplateSpec
from nofx.apiserver import ApiServer
from nofx.reconcilers.namespaces import NamespaceLabels
from nofx.reconcilers.run_watch import RunWatch
from nofx.reconcilers.specs import Specs
from nofx.reconcilers.step_jobs import StepJobs
from nofx.watching import Watching


@dataclass
class Watched:
    runs: RunWatch = field(default_factory=RunWatch)
    step_jobs: StepJobs = field(default_factory=StepJobs)
    agents: Specs[AgentSpec] = field(default_factory=lambda: Specs(AgentSpec, "agents"))
    templates: Specs[TemplateSpec] = field(default_factory=lambda: Specs(TemplateSpec, "templates"))
    namespaces: NamespaceLabels = field(default_factory=NamespaceLabels)
    workloads: Any = None  # Kopf's index of Kueue's Workloads by Job; None: no Kueue

    @classmethod
    def of_cluster(cls, server: ApiServer, namespaces: tuple[str, ...]) -> Watched:
        watched = cls(
            RunWatch(server, namespaces),
            StepJobs(server, namespaces),
            Specs(AgentSpec, "agents", server, namespaces),
            Specs(TemplateSpec, "templates", server, namespaces),
            NamespaceLabels(server, namespaces),
        )
        # The Agent and Template handlers read each other's specs, and wake Runs.
        watched.agents.ready = watched.templates.ready = watched.is_listed
        return watched

    @property
    def parts(self) -> tuple[Watching, ...]:
        """What a Run's reconcile waits for. Not the namespaces' labels: one not seen is read
        from the API server, so a namespace watch that cannot list (RBAC from an older chart)
        costs a GET per Run, as before, and holds no Run back."""
        return (self.runs, self.step_jobs, self.agents, self.templates)

    def start(self) -> None:
        """After every handler is in place: what the first lists hold goes to them."""
        for part in (*self.parts, self.namespaces):
            part.start()

    def stop(self) -> None:
        for part in (*self.parts, self.namespaces):
            part.stop()

    def is_listed(self) -> bool:
        return all(part.is_listed() for part in self.parts)

    def set_handling(self, now: bool) -> None:
        """Standing by (False), the watches tell nobody what they see; see watching.py."""
        for part in (self.runs, self.agents, self.templates):  # step Jobs only wake Runs
            part.set_handling(now)

    def wait_listed(self) -> None:
        """Until every watch has listed once: before that, a Run's Jobs or Agents could be
        taken for missing ones."""
        for part in self.parts:
            part.wait_listed()
