"""Step Jobs as a watch of our own sees them: what each Run's Jobs show, which Jobs of each
Agent are unfinished (its concurrency slots), the Run of each Job waiting in a Kueue queue;
and a call to the Run reconciler when a Job finishes or goes away.

Kopf handled these once: an index and a handler, both run on each of the dozen events a Run's
Jobs go through, with Kopf's processing around each (a third of the operator's CPU under
load). This watch decodes each event's JSON, reads what the planner needs (observe_job), and
calls back only when a finished Job shows something new. Only Jobs with the Run label are
listed (a label selector the API server applies), so other Jobs cost nothing."""

from __future__ import annotations

import threading
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from nofx.apiserver import ApiServer
from nofx.builders.job_status import observe_job
from nofx.builders.labels import AGENT_LABEL, RUN_LABEL
from nofx.builders.ownership import owning_run
from nofx.planner.facts import JobObservation
from nofx.watching import Key as JobKey
from nofx.watching import Watch, Watching


@dataclass(frozen=True)
class StepJob:
    namespace: str
    run: str | None  # the owning Run's name
    agent: str | None  # the Job's Agent label
    observation: JobObservation
    version: str = ""  # its resourceVersion: a fresh list tells only Jobs that changed


# Called on the watch's thread with a Job's last state when it finished, changed after
# finishing, or went away.
Finished = Callable[[StepJob], None]


class StepJobs(Watching):
    def __init__(self, server: ApiServer | None = None, namespaces: tuple[str, ...] = ()) -> None:
        self.on_finished: Finished | None = None
        self._lock = threading.Lock()
        self._jobs: dict[JobKey, StepJob] = {}
        self._by_run: dict[tuple[str, str], dict[str, JobObservation]] = defaultdict(dict)
        self._active_by_agent: dict[tuple[str, str], set[str]] = defaultdict(set)
        # server None: nothing is watched (tests fill it through listed and changed).
        scopes = namespaces or ("",)  # "": every namespace
        self.watches = (
            [
                Watch(server, _jobs_path(ns), {"labelSelector": RUN_LABEL}, self, "step Job", ns)
                for ns in scopes
            ]
            if server is not None
            else []
        )

    # --- what the Run reconciler reads ---

    def of_run(self, namespace: str, run: str) -> dict[str, JobObservation]:
        with self._lock:
            return dict(self._by_run.get((namespace, run), {}))

    def active_of_agent(self, namespace: str, agent_label: str) -> set[str]:
        """Names of the Agent's Jobs that have not finished."""
        with self._lock:
            return set(self._active_by_agent.get((namespace, agent_label), set()))

    def run_of_job(self, namespace: str, job: str) -> str | None:
        with self._lock:
            seen = self._jobs.get((namespace, job))
        return seen.run if seen else None

    # --- what the watch tells ---

    def held_versions(self, scope: str) -> dict[JobKey, str]:
        with self._lock:
            return {k: job.version for k, job in self._jobs.items() if scope in ("", k[0])}

    def changed(self, scope: str, kind: str, job: dict[str, Any]) -> None:
        metadata = job["metadata"]
        key = (metadata["namespace"], metadata["name"])
        if kind == "DELETED":
            self._forget(key)
            return
        agent = (metadata.get("labels") or {}).get(AGENT_LABEL)
        version = metadata.get("resourceVersion", "")
        seen = StepJob(key[0], owning_run(job), agent, observe_job(job), version)
        with self._lock:
            before = self._jobs.get(key)
            if before is not None:
                self._remove(key, before)
            self._add(key, seen)
        finished = seen.observation.state != "Active"
        if finished and (before is None or before.observation != seen.observation):
            self._tell(seen)

    def _forget(self, key: JobKey) -> None:
        with self._lock:
            before = self._jobs.get(key)
            if before is not None:
                self._remove(key, before)
        if before is not None:
            self._tell(before)

    def _tell(self, job: StepJob) -> None:
        if self.on_finished is not None:
            self.on_finished(job)

    # --- the maps (lock held) ---

    def _add(self, key: JobKey, job: StepJob) -> None:
        self._jobs[key] = job
        if job.run:
            self._by_run[(job.namespace, job.run)][key[1]] = job.observation
        if job.agent and job.observation.state == "Active":
            self._active_by_agent[(job.namespace, job.agent)].add(key[1])

    def _remove(self, key: JobKey, job: StepJob) -> None:
        del self._jobs[key]
        if job.run:
            jobs = self._by_run[(job.namespace, job.run)]
            jobs.pop(key[1], None)
            if not jobs:
                del self._by_run[(job.namespace, job.run)]
        active = self._active_by_agent.get((job.namespace, job.agent or ""))
        if active is not None:
            active.discard(key[1])
            if not active:
                del self._active_by_agent[(job.namespace, job.agent or "")]


def _jobs_path(namespace: str) -> str:
    return f"/apis/batch/v1/namespaces/{namespace}/jobs" if namespace else "/apis/batch/v1/jobs"
