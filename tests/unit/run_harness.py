"""RunReconciler driven directly over a FakeKube: one Run, what the operator's watches would
hold rebuilt from the fake's objects, and the Job controller's and kubelet's part played by
finish_job()."""

from __future__ import annotations

import json
from typing import Any, cast

from nofx.api import AgentSpec, RunStatus, StepStatus
from nofx.api.common import API_VERSION
from nofx.builders.job import CONTAINER_NAME
from nofx.kube import Kube
from nofx.planner.naming import job_name
from nofx.reconcilers import observe
from nofx.reconcilers.run_reconciler import RunKey, RunReconciler
from nofx.workqueue import Result
from tests.unit.builders import agent
from tests.unit.fake_kube import FakeKube

NAMESPACE = "team-a"
NAME = "demo"
KEY: RunKey = (NAMESPACE, NAME)
AGENTS = {"coder": agent("ghcr.io/nofx/coder:1")}
RETRY = {"limit": 2, "backoff": {"duration": "1s", "factor": 1}}


def step(name: str, *depends_on: str, **fields: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {"name": name, "agentRef": {"name": "coder"}}
    if depends_on:
        spec["dependsOn"] = list(depends_on)
    return spec | fields


class Harness:
    def __init__(self, *steps: dict[str, Any], agents: dict[str, AgentSpec] | None = None) -> None:
        self.kube = FakeKube()
        self.reconciler = RunReconciler(cast(Kube, self.kube))
        self.agents = AGENTS if agents is None else agents
        self.kube.put(
            "runs",
            {
                "apiVersion": API_VERSION,
                "kind": "Run",
                "metadata": {"name": NAME, "namespace": NAMESPACE},
                "spec": {"steps": list(steps)},
            },
        )
        self.sync()

    def sync(self) -> None:
        """What the watches would hold after seeing every object of the fake, and the Run's
        last change delivered as a watch event would deliver it."""
        run = self.kube.objects.get(("runs", NAMESPACE, NAME))
        known = self.kube.own_writes.latest("runs", NAMESPACE, NAME)
        if run is not None and (known is None or known["metadata"] != run["metadata"]):
            self.kube.own_writes.seen("runs", run)
        jobs = [body for (plural, _, _), body in self.kube.objects.items() if plural == "jobs"]
        watched = self.reconciler.watched
        watched.step_jobs.listed("", jobs)
        watched.agents.listed("", [_agent_body(name, spec) for name, spec in self.agents.items()])

    def reconcile(self, body: dict[str, Any] | None = None) -> Result:
        """One pass, as a worker runs it, after the watches caught up."""
        self.sync()
        return self.reconciler._reconcile(KEY, body, self._observed())

    def attempt(self, reconcile_error: Exception | None = None) -> None:
        """One pass with a worker's error handling (nofx.workqueue.handle), synchronously."""
        self.sync()
        try:
            self.reconciler._reconcile(KEY, None, self._observed())
            self.reconciler.backoff.forget(KEY)
        except Exception as error:
            retry = self.reconciler.backoff.when(KEY)
            self.reconciler.report_failure(KEY, reconcile_error or error, retry)

    def _observed(self) -> observe.Observed:
        return observe.observe(self.reconciler.watched, KEY, self.reconciler.waiters.version)

    @property
    def body(self) -> dict[str, Any]:
        return self.kube.objects[("runs", NAMESPACE, NAME)]

    @property
    def status(self) -> RunStatus:
        return RunStatus.model_validate(self.body.get("status") or {})

    def step(self, name: str) -> StepStatus:
        return next(e for e in self.status.steps or [] if e.name == name)

    def job_name(self, step: str, attempt: int) -> str:
        return job_name(NAME, self.body["metadata"]["uid"], step, None, attempt)

    def finish_job(
        self,
        name: str,
        *,
        outputs: dict[str, Any] | None = None,
        exit_code: int = 0,
        pod: bool = True,
    ) -> None:
        """The Job finished (Complete, or Failed for a non-zero exit code); with `pod`, its Pod
        stays with the agent container's termination message."""
        job = self.kube.objects[("jobs", NAMESPACE, name)]
        if exit_code == 0:
            job["status"] = {"conditions": [{"type": "Complete", "status": "True"}], "succeeded": 1}
        else:
            failed = {"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded"}
            job["status"] = {"conditions": [failed], "failed": 1}
        self.kube.touched(job)
        if pod:
            terminated = {"exitCode": exit_code, "message": json.dumps(outputs or {})}
            self.kube.pods[(NAMESPACE, name)] = {
                "metadata": {"name": f"{name}-x", "labels": {"job-name": name}},
                "status": {
                    "containerStatuses": [
                        {"name": CONTAINER_NAME, "state": {"terminated": terminated}}
                    ]
                },
            }


def _agent_body(name: str, spec: AgentSpec) -> dict[str, Any]:
    # Tests change an Agent by replacing its spec: a new spec, a new resourceVersion.
    version = json.dumps(spec.to_dict(), sort_keys=True)
    metadata = {"name": name, "namespace": NAMESPACE, "resourceVersion": version}
    return {"metadata": metadata, "spec": spec.to_dict()}
