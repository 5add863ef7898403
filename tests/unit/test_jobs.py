"""Step attempt → Job (build_job) and Job + Pod → what happened (observe_job, with_pod)."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from typing import Any

import pytest

from nofx.api import AgentSpec
from nofx.builders.job import RUN_AS_USER, RunRef, build_job
from nofx.builders.job_status import observe_job, with_pod
from nofx.planner.attempts import timeout_seconds
from nofx.planner.facts import JobObservation, JobRequest
from nofx.planner.naming import job_name
from tests.unit.builders import RUN_UID, Sim, agent, inline, step

RUN = RunRef(name="demo", namespace="team-a", uid=RUN_UID, account="acme")
LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")

FULL_AGENT = agent(
    "ghcr.io/nofx/coder:1.2@sha256:" + "a" * 64,
    command=["python", "-m", "coder"],
    args=["--fast"],
    skills=["code", "go"],
    tools=["git", "gh"],
    model={
        "provider": "anthropic",
        "name": "claude-sonnet",
        "credentialsSecretRef": {"name": "anthropic-key", "key": "api-key"},
    },
    prompts={"system": "You write code."},
    env=[
        {"name": "LOG_LEVEL", "value": "debug"},
        {"name": "GH_TOKEN", "valueFrom": {"secretKeyRef": {"name": "gh", "key": "token"}}},
    ],
    envFrom=[{"configMapRef": {"name": "coder-settings"}}],
    resources={"requests": {"cpu": "500m", "memory": "512Mi"}, "limits": {"memory": "1Gi"}},
    serviceAccountName="coder",
    podAnnotations={"example.com/team": "platform"},
    podLabels={"team": "platform"},
)


def request(
    agent_spec: AgentSpec = FULL_AGENT,
    *,
    agent_name: str = "coder",
    step_name: str = "code",
    index: int | None = None,
    attempt: int = 1,
    inputs: dict[str, Any] | None = None,
    item: Any = None,
    timeout: int | None = None,
    run: RunRef = RUN,
) -> JobRequest:
    return JobRequest(
        step=step_name,
        index=index,
        attempt=attempt,
        agent_name=agent_name,
        agent=agent_spec,
        inputs=inputs if inputs is not None else {"task": "fix it"},
        item=item,
        timeout_seconds=timeout,
        job_name=job_name(run.name, run.uid, step_name, index, attempt),
    )


def container(job: dict[str, Any]) -> dict[str, Any]:
    [only] = job["spec"]["template"]["spec"]["containers"]
    return only


def env(job: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {variable["name"]: variable for variable in container(job)["env"]}


# --- build_job ------------------------------------------------------------------------------


def test_job_is_owned_by_its_run_and_labelled_to_be_found() -> None:
    job = build_job(RUN, request(attempt=2))
    metadata = job["metadata"]
    assert (job["apiVersion"], job["kind"]) == ("batch/v1", "Job")
    assert metadata["name"] == job_name("demo", RUN_UID, "code", None, 2)
    assert metadata["namespace"] == "team-a"
    assert metadata["ownerReferences"] == [
        {
            "apiVersion": "nofx.dev/v1alpha1",
            "kind": "Run",
            "name": "demo",
            "uid": RUN_UID,
            "controller": True,
            "blockOwnerDeletion": True,
        }
    ]
    assert metadata["labels"] == {
        "nofx.dev/run": "demo",
        "nofx.dev/step": "code",
        "nofx.dev/attempt": "2",
        "nofx.dev/agent": "coder",
        "nofx.dev/account": "acme",
        "app.kubernetes.io/managed-by": "nofx-operator",
    }


def test_job_never_retries_by_itself_and_its_pod_never_restarts() -> None:
    job = build_job(RUN, request())
    assert job["spec"]["backoffLimit"] == 0
    assert job["spec"]["template"]["spec"]["restartPolicy"] == "Never"


def test_pod_labels_are_the_agents_plus_the_operators_which_win() -> None:
    # The API refuses reserved keys in podLabels; model_copy skips that check, and the Job
    # builder does not rely on it.
    spoofing = FULL_AGENT.model_copy(
        update={"pod_labels": {"team": "platform", "nofx.dev/run": "spoofed"}}
    )
    job = build_job(RUN, request(agent_spec=spoofing))
    labels = job["spec"]["template"]["metadata"]["labels"]
    assert labels["team"] == "platform"
    assert labels["nofx.dev/run"] == "demo"  # an Agent cannot spoof the Run label
    assert job["metadata"]["labels"].items() <= labels.items()
    assert job["spec"]["template"]["metadata"]["annotations"] == {"example.com/team": "platform"}


def assert_restricted(pod: dict[str, Any]) -> None:
    """The checks of the `restricted` Pod Security Standard (v1.30) that a Job can fail."""
    for forbidden in ("hostNetwork", "hostPID", "hostIPC"):
        assert not pod.get(forbidden), forbidden
    allowed_volumes = {"emptyDir", "configMap", "secret", "projected", "downwardAPI"}
    allowed_volumes |= {"persistentVolumeClaim", "ephemeral", "csi"}
    for volume in pod.get("volumes", []):
        assert set(volume) - {"name"} <= allowed_volumes, volume
    pod_context = pod.get("securityContext", {})
    assert pod_context.get("runAsUser", 1) != 0
    for box in pod["containers"] + pod.get("initContainers", []):
        context = box.get("securityContext", {})
        assert context.get("runAsNonRoot", pod_context.get("runAsNonRoot")) is True
        assert context.get("runAsUser", 1) != 0
        assert context.get("allowPrivilegeEscalation") is False
        assert not context.get("privileged")
        capabilities = context.get("capabilities", {})
        assert "ALL" in capabilities.get("drop", [])
        assert set(capabilities.get("add", [])) <= {"NET_BIND_SERVICE"}
        seccomp = context.get("seccompProfile", pod_context.get("seccompProfile", {}))
        assert seccomp.get("type") in ("RuntimeDefault", "Localhost")
        assert not box.get("ports") or all(not p.get("hostPort") for p in box["ports"])


@pytest.mark.parametrize("agent_spec", [FULL_AGENT, agent("busybox")], ids=["full", "bare"])
def test_pod_passes_the_restricted_pod_security_standard(agent_spec: AgentSpec) -> None:
    pod = build_job(RUN, request(agent_spec))["spec"]["template"]["spec"]
    assert_restricted(pod)
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == RUN_AS_USER
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    context = container({"spec": {"template": {"spec": pod}}})["securityContext"]
    assert context["allowPrivilegeEscalation"] is False
    assert context["capabilities"] == {"drop": ["ALL"]}
    assert context["runAsNonRoot"] is True


def test_pod_gets_the_agents_image_command_resources_and_service_account() -> None:
    job = build_job(RUN, request())
    pod = job["spec"]["template"]["spec"]
    box = container(job)
    assert box["name"] == "agent"
    assert box["image"] == FULL_AGENT.image
    assert (box["command"], box["args"]) == (["python", "-m", "coder"], ["--fast"])
    assert box["resources"] == {
        "requests": {"cpu": "500m", "memory": "512Mi"},
        "limits": {"memory": "1Gi"},
    }
    assert box["envFrom"] == [{"configMapRef": {"name": "coder-settings"}}]
    assert box["terminationMessagePolicy"] == "File"
    assert pod["serviceAccountName"] == "coder"
    token = build_job(RUN, request(agent("busybox", automountServiceAccountToken=True)))
    assert token["spec"]["template"]["spec"]["automountServiceAccountToken"] is True


def test_a_bare_agent_leaves_optional_fields_out() -> None:
    job = build_job(RUN, request(agent("busybox")))
    pod = job["spec"]["template"]["spec"]
    box = container(job)
    for absent in ("command", "args", "envFrom", "resources"):
        assert absent not in box
    assert "serviceAccountName" not in pod
    assert pod["automountServiceAccountToken"] is False, "no API token unless the Agent asks"
    assert "activeDeadlineSeconds" not in job["spec"]
    assert set(env(job)) == {"NOFX_RUN", "NOFX_STEP", "NOFX_ATTEMPT", "NOFX_INPUTS"}


@pytest.mark.parametrize(
    "inputs",
    [
        {},
        {"task": "fix it"},
        {"quote": 'say "hi"\nand leave', "unicode": "naïve ✓", "json": '["a.py"]'},
    ],
)
def test_nofx_inputs_is_the_json_of_the_rendered_inputs(inputs: dict[str, Any]) -> None:
    variables = env(build_job(RUN, request(inputs=inputs)))
    assert json.loads(variables["NOFX_INPUTS"]["value"]) == inputs
    assert variables["NOFX_RUN"]["value"] == "demo"
    assert variables["NOFX_STEP"]["value"] == "code"
    assert variables["NOFX_ATTEMPT"]["value"] == "1"


def test_agent_settings_reach_the_container_environment() -> None:
    variables = env(build_job(RUN, request()))
    assert variables["NOFX_SKILLS"]["value"] == "code,go"
    assert variables["NOFX_ALLOWED_TOOLS"]["value"] == "git,gh"
    assert variables["NOFX_MODEL_PROVIDER"]["value"] == "anthropic"
    assert variables["NOFX_MODEL_NAME"]["value"] == "claude-sonnet"
    assert variables["NOFX_SYSTEM_PROMPT"]["value"] == "You write code."
    assert variables["LOG_LEVEL"] == {"name": "LOG_LEVEL", "value": "debug"}
    assert variables["GH_TOKEN"] == {
        "name": "GH_TOKEN",
        "valueFrom": {"secretKeyRef": {"name": "gh", "key": "token"}},
    }


def test_model_credentials_are_only_a_secret_reference() -> None:
    job = build_job(RUN, request())
    assert env(job)["NOFX_MODEL_CREDENTIALS"] == {
        "name": "NOFX_MODEL_CREDENTIALS",
        "valueFrom": {"secretKeyRef": {"name": "anthropic-key", "key": "api-key"}},
    }
    # The Secret is named nowhere else in the Job: no value, label or annotation carries it.
    text = json.dumps(job)
    assert text.count("anthropic-key") == 1


def test_system_prompt_from_a_config_map_is_a_reference() -> None:
    prompted = agent("busybox", prompts={"configMapRef": {"name": "prompts", "key": "coder"}})
    assert env(build_job(RUN, request(prompted)))["NOFX_SYSTEM_PROMPT"] == {
        "name": "NOFX_SYSTEM_PROMPT",
        "valueFrom": {"configMapKeyRef": {"name": "prompts", "key": "coder"}},
    }


def test_for_each_item_jobs_carry_item_and_index() -> None:
    job = build_job(RUN, request(index=3, item={"repo": "nofx/web"}))
    variables = env(job)
    assert json.loads(variables["NOFX_ITEM"]["value"]) == {"repo": "nofx/web"}
    assert variables["NOFX_INDEX"]["value"] == "3"
    assert job["metadata"]["labels"]["nofx.dev/index"] == "3"
    assert job["spec"]["template"]["metadata"]["labels"]["nofx.dev/index"] == "3"
    assert job["metadata"]["name"] == job_name("demo", RUN_UID, "code", 3, 1)
    assert "nofx.dev/index" not in build_job(RUN, request())["metadata"]["labels"]


def test_step_timeout_is_the_active_deadline() -> None:
    assert build_job(RUN, request(timeout=90))["spec"]["activeDeadlineSeconds"] == 90


@pytest.mark.parametrize(
    ("duration", "seconds"),
    [
        (None, None),
        ("", None),
        ("90s", 90),
        ("10m", 600),
        ("1h30m", 5400),
        ("1.5h", 5400),
        ("250ms", 1),  # Kubernetes counts in whole seconds, at least one
        ("2500ms", 2),
    ],
)
def test_timeout_seconds(duration: str | None, seconds: int | None) -> None:
    assert timeout_seconds(duration) == seconds


def test_a_decided_request_builds_a_job_with_rendered_inputs_and_deadline() -> None:
    sim = Sim(
        inline(
            step("plan", timeout="2m", inputs={"repo": "{{ params.repo }}", "n": "{{ params.n }}"}),
            parameters={"repo": "nofx/api", "n": 2},
        )
    )
    [wanted] = sim.decide().create_jobs
    job = build_job(RUN, wanted)
    assert job["metadata"]["name"] == sim.status.steps[0].job_name  # type: ignore[index]
    assert json.loads(env(job)["NOFX_INPUTS"]["value"]) == {"repo": "nofx/api", "n": "2"}
    assert job["spec"]["activeDeadlineSeconds"] == 120
    assert container(job)["image"] == "ghcr.io/nofx/coder:1"


def label_values(job: dict[str, Any]) -> list[str]:
    return [
        *job["metadata"]["labels"].values(),
        *job["spec"]["template"]["metadata"]["labels"].values(),
    ]


@pytest.mark.parametrize(
    ("run_name", "agent_name", "account"),
    [
        ("demo", "coder", "acme"),
        ("r" * 63, "a" * 63, "team_ml.eu-1"),
        ("nightly.release-2030", "coder.v2", "A1"),
        ("r" * 64, "coder", "acme"),
        ("demo", "a" * 64, "acme"),
        ("demo", "coder", "acme:team-ml"),
        ("demo", "coder", "acme/ml"),
        ("demo", "coder", "ana@example.com"),
    ],
)
def test_every_label_and_the_name_are_valid_for_the_api_server(
    run_name: str, agent_name: str, account: str
) -> None:
    run = RunRef(name=run_name, namespace="team-a", uid=RUN_UID, account=account)
    job = build_job(run, request(agent_name=agent_name, run=run, index=7, attempt=11))
    name = job["metadata"]["name"]
    assert len(name) <= 63 and DNS_SUBDOMAIN.match(name), name
    for value in label_values(job):
        assert len(value) <= 63 and LABEL_VALUE.match(value), value


# --- observe_job and with_pod ---------------------------------------------------------------


def stored_job(status: dict[str, Any] | None = None, **labels: str) -> dict[str, Any]:
    job = build_job(RUN, request(index=2, attempt=3))
    job["metadata"]["labels"].update(labels)
    if status is not None:
        job["status"] = status
    return job


def test_a_new_job_is_active() -> None:
    observed = observe_job(stored_job())
    assert observed == JobObservation(
        name=job_name("demo", RUN_UID, "code", 2, 3),
        step="code",
        index=2,
        attempt=3,
        state="Active",
    )


def test_a_complete_job_succeeded_with_its_times() -> None:
    observed = observe_job(
        stored_job(
            {
                "startTime": "2030-01-01T12:00:00Z",
                "completionTime": "2030-01-01T12:01:30Z",
                "conditions": [
                    {"type": "SuccessCriteriaMet", "status": "True"},
                    {"type": "Complete", "status": "True"},
                ],
            }
        )
    )
    assert observed.state == "Succeeded"
    assert observed.started_at == datetime(2030, 1, 1, 12, 0, tzinfo=UTC)
    assert observed.finished_at == datetime(2030, 1, 1, 12, 1, 30, tzinfo=UTC)
    assert (observed.reason, observed.message) == (None, None)


def test_a_failed_job_keeps_reason_and_message() -> None:
    observed = observe_job(
        stored_job(
            {
                "startTime": "2030-01-01T12:00:00Z",
                "conditions": [
                    {"type": "FailureTarget", "status": "True", "reason": "DeadlineExceeded"},
                    {
                        "type": "Failed",
                        "status": "True",
                        "reason": "DeadlineExceeded",
                        "message": "Job was active longer than specified deadline",
                    },
                ],
            }
        )
    )
    assert (observed.state, observed.reason, observed.message) == (
        "Failed",
        "DeadlineExceeded",
        "Job was active longer than specified deadline",
    )
    assert observed.finished_at is None


@pytest.mark.parametrize(
    "conditions",
    [
        [{"type": "Complete", "status": "False"}],
        [{"type": "Failed", "status": "Unknown"}],
        [{"type": "Suspended", "status": "True"}],
        # Kubernetes 1.31+: the Job is failing or succeeding, but its Pods are still there.
        [{"type": "FailureTarget", "status": "True", "reason": "BackoffLimitExceeded"}],
        [{"type": "SuccessCriteriaMet", "status": "True"}],
    ],
)
def test_a_job_without_a_true_complete_or_failed_condition_is_active(
    conditions: list[dict[str, str]],
) -> None:
    assert observe_job(stored_job({"conditions": conditions})).state == "Active"


def test_a_job_without_nofx_labels_is_observed_without_crashing() -> None:
    observed = observe_job({"metadata": {"name": "stray"}, "status": {}})
    assert (observed.name, observed.step, observed.index, observed.attempt) == (
        "stray",
        "",
        None,
        0,
    )


def pod(*statuses: dict[str, Any]) -> dict[str, Any]:
    return {"status": {"containerStatuses": list(statuses)}}


def terminated(name: str, exit_code: int, message: str | None, **times: str) -> dict[str, Any]:
    state: dict[str, Any] = {"exitCode": exit_code, **times}
    if message is not None:
        state["message"] = message
    return {"name": name, "state": {"terminated": state}}


FINISHED = JobObservation(
    name="demo-code-abc123-1",
    step="code",
    index=None,
    attempt=1,
    state="Failed",
    reason="BackoffLimitExceeded",
    started_at=datetime(2030, 1, 1, 12, 0, tzinfo=UTC),
)


def test_with_pod_reads_the_agent_container_only() -> None:
    observed = with_pod(
        FINISHED,
        pod(
            terminated("istio-proxy", 0, "sidecar says hi"),
            terminated(
                "agent",
                3,
                '{"error": "tests failed"}',
                startedAt="2030-01-01T12:00:05Z",
                finishedAt="2030-01-01T12:02:00Z",
            ),
        ),
    )
    assert observed.termination_message == '{"error": "tests failed"}'
    assert observed.exit_code == 3
    assert observed.started_at == datetime(2030, 1, 1, 12, 0, 5, tzinfo=UTC)
    assert observed.finished_at == datetime(2030, 1, 1, 12, 2, tzinfo=UTC)
    assert (observed.state, observed.reason) == ("Failed", "BackoffLimitExceeded")


def test_with_pod_keeps_job_times_when_the_container_has_none() -> None:
    observed = with_pod(FINISHED, pod(terminated("agent", 0, None)))
    assert (observed.exit_code, observed.termination_message) == (0, None)
    assert observed.started_at == FINISHED.started_at


@pytest.mark.parametrize(
    "found",
    [
        None,
        {},
        {"status": {}},
        pod({"name": "agent", "state": {"running": {"startedAt": "2030-01-01T12:00:00Z"}}}),
        pod({"name": "agent", "state": {"waiting": {"reason": "ImagePullBackOff"}}}),
        pod(terminated("sidecar", 1, "not ours")),
    ],
    ids=["no-pod", "empty", "no-statuses", "running", "waiting", "other-container"],
)
def test_with_pod_without_a_terminated_agent_container_changes_nothing(
    found: dict[str, Any] | None,
) -> None:
    assert with_pod(FINISHED, found) == FINISHED
