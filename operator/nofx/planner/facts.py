"""What the planner reads and what it returns: the Run, what the operator observed of the world
around it, and the Decision (the new status and the actions that bring the cluster there)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Literal

from nofx.api.account_budgets import AccountBudget
from nofx.api.agent import AgentSpec
from nofx.api.run import (
    RunSpec,
    RunStatus,
)
from nofx.api.template import TemplateSpec
from nofx.changes import AttemptFinished

JobState = Literal["Active", "Succeeded", "Failed", "Missing"]


@dataclass(frozen=True)
class Admission:
    """What Kueue says of a queued step Job, from its Workload's conditions."""

    admitted: bool
    reason: str | None = None  # Kueue's reason why not: Pending, Inadmissible, Preempted ...
    message: str | None = None  # Kueue's own words, e.g. "... insufficient unused quota ..."
    evicted: bool = False  # it had been admitted, and Kueue took the admission back
    cluster_queue: str | None = None  # the ClusterQueue that admitted it
    admitted_at: datetime | None = None  # when (the Admitted condition's transition)


@dataclass(frozen=True)
class JobObservation:
    """What the operator knows about one step attempt's Job (and, once finished, its Pod)."""

    name: str
    step: str
    index: int | None
    attempt: int
    state: JobState
    reason: str | None = None
    message: str | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    created_at: datetime | None = None
    pods_started: bool = False  # the Job controller created a Pod (it may have ended since)
    pod_create_error: str | None = None  # why it could not, from its FailedCreate Events
    # Kueue: the LocalQueue the Job names, whether it is suspended (not admitted, or evicted),
    # and what its Workload says (None: no Workload seen yet).
    queue_name: str | None = None
    suspended: bool = False
    admission: Admission | None = None

    @property
    def queued(self) -> bool:
        """Waits for Kueue: its Workload says it is not admitted (or was evicted, while its
        Pod stops); before there is a Workload, its suspension says so."""
        if self.state != "Active" or not self.queue_name:
            return False
        if self.admission is None:
            return self.suspended
        return not self.admission.admitted

    # From the Pod's agent container, read once when the Job finished:
    pod_read: bool = False  # its terminated state was found: outputs below are what it wrote
    termination_message: str | None = None
    exit_code: int | None = None


@dataclass(frozen=True)
class JobRequest:
    """One step attempt that should run now."""

    step: str
    index: int | None
    attempt: int
    agent_name: str
    agent: AgentSpec
    inputs: dict[str, Any]
    item: Any
    timeout_seconds: int | None
    job_name: str
    queue_name: str | None = None  # Kueue's LocalQueue: the Job is created suspended, labelled


@dataclass(frozen=True)
class Limits:
    """Bounds set per install (operator flags)."""

    max_depth: int = 5  # how deep child Runs nest; a root Run is at depth 0
    max_runs: int = 500  # child Runs under one root Run, at every depth
    pod_create_timeout: timedelta = timedelta(seconds=60)  # a Job that cannot create its Pod
    kueue: bool = False  # Kueue admits step Jobs of Runs that name a queue (nofx operator --kueue)


@dataclass(frozen=True)
class RunView:
    """The Run as the API server stores it."""

    name: str
    namespace: str
    uid: str
    generation: int
    spec: RunSpec
    status: RunStatus
    depth: int = 0  # 0 for a Run a person made, parent's + 1 for a child Run
    root_uid: str | None = None  # uid of the root of its tree of child Runs (its own for a root)


@dataclass(frozen=True)
class ChildRunObservation:
    name: str
    # The child's status.phase; "Missing" once it is known to be deleted, "Rejected" when the
    # API server refused to create it (message says why).
    phase: str | None
    outputs: dict[str, Any] | None = None
    message: str | None = None


@dataclass(frozen=True)
class CacheHit:
    """A successful attempt whose outputs a cached step may reuse (planner/caching.py)."""

    namespace: str
    run_name: str
    run_uid: str
    step: str
    outputs: dict[str, Any]
    created_at: datetime


@dataclass(frozen=True)
class CacheQuery:
    """A cache key to look up: the newest entry of the namespace's account since `since`."""

    key: str
    namespace: str
    account: str
    since: datetime


@dataclass(frozen=True)
class World:
    """What the operator observed; everything decide() needs besides the Run itself."""

    now: datetime
    template: TemplateSpec | None = None  # the referenced Template, needed until pinned
    template_invalid: bool = False  # it exists, but its spec does not validate
    agents: dict[str, AgentSpec] = field(default_factory=dict)  # the namespace's, until pinned
    jobs: dict[str, JobObservation] = field(default_factory=dict)  # this Run's, by Job name
    child_runs: dict[str, ChildRunObservation] = field(default_factory=dict)
    free_slots: dict[str, int] = field(default_factory=dict)  # agents with maxConcurrentSteps
    # The namespace's Templates (None: exists but invalid), to find cycles of child Runs.
    templates: Mapping[str, TemplateSpec | None] = field(default_factory=dict)
    limits: Limits = Limits()
    tree_size: int = 0  # child Runs that exist under this Run's root
    # The account of the Run's namespace (nofx.api.accounts), read until the Run's is pinned.
    namespace_account: str | None = None
    # The monthly budget of the Run's account and what it spent, until the Run is pinned.
    account_budget: AccountBudget | None = None
    # Whether cached steps can be looked up (the operator has a Postgres mirror), and the
    # answers known so far for this Run: cache key → the entry to reuse, or None (a miss). A
    # key not in it has no answer yet.
    cache_enabled: bool = False
    cache_answers: Mapping[str, CacheHit | None] = field(default_factory=dict)
    # The namespace's default Kueue LocalQueue (its label nofx.dev/queue-name), read until pinned.
    namespace_queue: str | None = None


@dataclass(frozen=True)
class ChildRunRequest:
    name: str
    step: str
    index: int | None
    template: str
    parameters: dict[str, Any]
    queue_name: str | None = None  # the parent's Kueue LocalQueue: the child is queued there


@dataclass
class Decision:
    status: RunStatus
    create_jobs: list[JobRequest] = field(default_factory=list)
    delete_jobs: list[str] = field(default_factory=list)
    create_child_runs: list[ChildRunRequest] = field(default_factory=list)
    cancel_child_runs: list[str] = field(default_factory=list)
    finished_attempts: list[AttemptFinished] = field(default_factory=list)
    # Seconds from a queued Job's creation to Kueue's first admission of it, per admitted Job.
    queue_waits: list[float] = field(default_factory=list)
    # (kind, name) the Run waits for: "Template", "Agent" (to exist) or "AgentSlot".
    waiting_for: set[tuple[str, str]] = field(default_factory=set)
    wake_at: datetime | None = None
    delete_run: bool = False
    cache_queries: list[CacheQuery] = field(default_factory=list)  # keys to look up

    def wake_no_later_than(self, when: datetime) -> None:
        if self.wake_at is None or when < self.wake_at:
            self.wake_at = when
