"""The rules of nofx.api.rules and the bounds of the API types, as pydantic enforces them: the
operator and the CLI refuse what the API server refuses, with the field in the error."""

from datetime import timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import BaseModel, ValidationError

from nofx.api import Agent, Run, Template
from nofx.api.common import parse_duration
from nofx.api.rules import MAX_PARAMETERS_SIZE, MAX_VALUE_SIZE, parse_quantity

IMAGE = "ghcr.io/nofx-dev/agent-coder:0.1.0"


def agent(**spec: Any) -> dict[str, Any]:
    return {"spec": {"image": IMAGE, **spec}}


def template(step: dict[str, Any] | None = None, **spec: Any) -> dict[str, Any]:
    return {"spec": {"steps": [{"name": "a", "agentRef": {"name": "x"}, **(step or {})}], **spec}}


def run(**spec: Any) -> dict[str, Any]:
    return {"spec": {"templateRef": {"name": "t"}, **spec}}


def inline_run(**spec: Any) -> dict[str, Any]:
    return {"spec": {"steps": [{"name": "a", "agentRef": {"name": "x"}}], **spec}}


def retries(**backoff: str) -> dict[str, Any]:
    return {"retries": {"limit": 3, "backoff": backoff}}


def limits(requests: dict[str, str], limits: dict[str, str]) -> dict[str, Any]:
    return {"resources": {"requests": requests, "limits": limits}}


BIG = "x" * (MAX_VALUE_SIZE + 1)
DIGEST = "sha256:" + "0" * 64

REFUSED = [
    # label and annotation keys: qualified names; reserved pod labels
    (Agent, agent(podLabels={"has space": "x"}), "spec.podLabels", "'has space'"),
    (Agent, agent(podLabels={"a" * 64: "x"}), "spec.podLabels", "qualified name"),
    (Agent, agent(podLabels={"-team": "x"}), "spec.podLabels", "qualified name"),
    (Agent, agent(podLabels={"Example.com/team": "x"}), "spec.podLabels", "qualified name"),
    (Agent, agent(podLabels={"a/b/c": "x"}), "spec.podLabels", "qualified name"),
    (Agent, agent(podLabels={"a" * 254 + "/b": "x"}), "spec.podLabels", "qualified name"),
    (Agent, agent(podLabels={"team": "has space"}), "spec.podLabels.team", "pattern"),
    (Agent, agent(podLabels={"team": "a" * 64}), "spec.podLabels.team", "at most 63"),
    (Agent, agent(podAnnotations={"has space": "x"}), "spec.podAnnotations", "'has space'"),
    (
        Agent,
        agent(podAnnotations={f"a{i}": "x" for i in range(33)}),
        "spec.podAnnotations",
        "at most 32",
    ),
    *[
        (Agent, agent(podLabels={key: "x"}), "spec.podLabels", "reserved")
        for key in (
            "batch.kubernetes.io/controller-uid",
            "batch.kubernetes.io/job-name",
            "job-name",
            "controller-uid",
            "nofx.dev/run",
            "app.kubernetes.io/managed-by",
        )
    ],
    # compute resources
    (Agent, agent(**limits({"cpu": "2"}, {"cpu": "1"})), "spec.resources", "requests.cpu"),
    (Agent, agent(**limits({"cpu": "1001m"}, {"cpu": "1"})), "spec.resources", "requests.cpu"),
    (
        Agent,
        agent(**limits({"memory": "1Gi"}, {"memory": "1000Mi"})),
        "spec.resources",
        "requests.memory",
    ),
    *[
        (Agent, agent(**limits({"cpu": text}, {})), "spec.resources.requests.cpu", "pattern")
        for text in ("lots", "1.5.5", "1e3", "-1", "1 Gi", "1KB", "")
    ],
    # environment variables and keys of Secrets and ConfigMaps
    *[
        (Agent, agent(env=[{"name": name, "value": "x"}]), "spec.env.0.name", "pattern")
        for name in ("1ST", "has space", "A=B", ".", "..", "..x")
    ],
    *[
        (
            Agent,
            agent(env=[{"name": "X", "valueFrom": {"secretKeyRef": {"name": "s", "key": key}}}]),
            "spec.env.0.valueFrom.secretKeyRef.key",
            "pattern",
        )
        for key in (".", "..", "..x", "a/b")
    ],
    # image and service account
    *[
        (Agent, agent(image=image), "spec.image", "pattern")
        for image in (
            "ghcr.io/x y",
            "ghcr.io/Upper/case",
            "x:a:b",
            "https://ghcr.io/x",
            "x@sha256:1",
        )
    ],
    (Agent, agent(serviceAccountName="Step_Runner"), "spec.serviceAccountName", "pattern"),
    (Agent, agent(skills=["has space"]), "spec.skills.0", "pattern"),
    # durations
    (Template, template({"timeout": "9999999999999h"}), "spec.steps.0.timeout", "pattern"),
    (Template, template({"timeout": "169h"}), "spec.steps.0.timeout", "at most 168h"),
    (Template, template({"timeout": "10081m"}), "spec.steps.0.timeout", "at most 168h"),
    (Template, template({"timeout": "1h1h"}), "spec.steps.0.timeout", "pattern"),
    (Template, template(timeout="721h"), "spec.timeout", "at most 720h"),
    (Run, run(timeout="721h"), "spec.timeout", "at most 720h"),
    (Run, inline_run(timeout="9999999999999h"), "spec.timeout", "pattern"),
    (
        Template,
        template(retries(duration="61m")),
        "spec.steps.0.retries.backoff.duration",
        "at most 1h",
    ),
    (
        Template,
        template(retries(maxDuration="25h")),
        "spec.steps.0.retries.backoff.maxDuration",
        "at most 24h",
    ),
    # retries, forEach
    (Template, template({"retries": {"limit": 11}}), "spec.steps.0.retries.limit", "10"),
    (Template, template(retries(factor=11)), "spec.steps.0.retries.backoff.factor", "10"),
    (Template, template({"forEach": "[]", "maxParallel": 101}), "spec.steps.0.maxParallel", "100"),
    # time to live
    (Run, run(ttlSecondsAfterFinished=10**12), "spec.ttlSecondsAfterFinished", "31536000"),
    # parameter values and names
    (Run, run(parameters={"big": BIG}), "spec.parameters", "big: must be at most 65536"),
    (Run, run(parameters={"big": [BIG[:-10], "y" * 10]}), "spec.parameters", "big: must be"),
    (
        Run,
        run(parameters={f"p{i}": "x" * MAX_VALUE_SIZE for i in range(4)} | {"last": "x"}),
        "spec.parameters",
        str(MAX_PARAMETERS_SIZE),
    ),
    (Run, inline_run(parameters={"has space": 1}), "spec.parameters", "'has space'"),
    (Run, inline_run(parameters={"a" * 64: 1}), "spec.parameters", "at most 63"),
    (Template, template(parameters=[{"name": "p", "default": BIG}]), "default", "at most"),
    (Template, template(parameters=[{"name": "p", "enum": [BIG]}]), "enum.0", "at most"),
    (
        Template,
        template({"childRun": {"templateRef": {"name": "t"}, "parameters": {"a b": 1}}}),
        "spec.steps.0.childRun.parameters",
        "'a b'",
    ),
    (Template, template({"inputs": {"has space": "x"}}), "spec.steps.0.inputs", "'has space'"),
    # approvals
    (
        Run,
        run(approvals=[{"step": f"s{i}", "approvedBy": "x"} for i in range(121)]),
        "spec.approvals",
        "at most 120",
    ),
    (Run, run(approvals=[{"step": "s", "approvedBy": ""}]), "spec.approvals.0.approvedBy", "1"),
]


def _ids(case: tuple[Any, ...]) -> str:
    return f"{case[2]}:{str(case[1])[-40:]}"


@pytest.mark.parametrize(("model", "doc", "field", "reason"), REFUSED, ids=map(_ids, REFUSED))
def test_models_refuse_naming_the_field(
    model: type[BaseModel], doc: dict[str, Any], field: str, reason: str
) -> None:
    with pytest.raises(ValidationError) as raised:
        model.model_validate(doc)
    errors = [(".".join(map(str, error["loc"])), error["msg"]) for error in raised.value.errors()]
    assert any(loc.endswith(field) and reason in msg for loc, msg in errors), errors


ACCEPTED = [
    (Agent, agent(podLabels={"team": "platform", "app.kubernetes.io/name": "coder"})),
    (Agent, agent(podLabels={"a" * 253 + "/" + "b" * 63: "", "x_y.z": "A-b_c.d"})),
    (Agent, agent(podAnnotations={"nofx.dev/purpose": "free text, with spaces"})),
    (Agent, agent(**limits({"cpu": "1", "memory": "1G"}, {"cpu": "1000m", "memory": "1Gi"}))),
    (Agent, agent(**limits({"cpu": "4"}, {"memory": "1Mi"}))),
    (Agent, agent(env=[{"name": ".x", "value": "1"}, {"name": "my.env-name", "value": "2"}])),
    (Agent, agent(image="localhost:5000/team/agent__x@" + DIGEST)),
    (Agent, agent(image="busybox")),
    (Template, template({"timeout": "168h"}, timeout="720h")),
    (Template, template({"timeout": "1h30m"} | retries(duration="1h", maxDuration="24h"))),
    (Run, run(timeout="719h59m59.999s", ttlSecondsAfterFinished=365 * 24 * 3600)),
    (Run, run(parameters={"big": "x" * MAX_VALUE_SIZE, "list": [1, 2], "obj": {"a": None}})),
]


@pytest.mark.parametrize(("model", "doc"), ACCEPTED, ids=lambda value: str(value)[-40:])
def test_models_accept_values_at_the_bounds(model: type[BaseModel], doc: dict[str, Any]) -> None:
    model.model_validate(doc)


@pytest.mark.parametrize(
    ("text", "value"),
    [("500m", "0.5"), ("2", "2"), ("1.5", "1.5"), ("1k", "1000"), ("1Ki", "1024"), ("3n", "3e-9")],
)
def test_parse_quantity(text: str, value: str) -> None:
    assert parse_quantity(text) == Decimal(value)


def test_parse_duration_refuses_more_than_its_maximum() -> None:
    assert parse_duration("720h") == timedelta(days=30)
    with pytest.raises(ValueError, match="longer than 720h"):
        parse_duration("720h1ms")
    with pytest.raises(ValueError, match="longer than 1h"):
        parse_duration("61m", maximum=timedelta(hours=1))
    with pytest.raises(ValueError, match="invalid duration"):
        parse_duration("9999999999999h")


# --- the same answer as the API server ------------------------------------------------------

INVALID = sorted((Path(__file__).resolve().parents[1] / "e2e" / "invalid").glob("*.yaml"))
# Manifests refused by CEL rules across fields (or by metadata rules) that pydantic does not
# repeat: nofx.validation reports some of them in status, the API server all of them.
CEL_ONLY = {
    "agent-bad-name",
    "agent-env-value-and-value-from",
    "agent-prompt-inline-and-config-map",
    "run-neither-template-ref-nor-steps",
    "run-template-ref-and-steps",
    "run-template-ref-with-inline-finally",
    "template-agent-ref-and-child-run",
    "template-cache-on-fan-out-and-child-run",
    "template-depends-on-unknown-step",
    "template-duplicate-step-names",
    "template-finally-name-clash",
    "template-max-parallel-without-for-each",
    "template-step-depends-on-itself",
    "template-step-without-agent",
}
MODELS = {"Agent": Agent, "Template": Template, "Run": Run}


def api_path(loc: tuple[int | str, ...]) -> str:
    """A pydantic error location as the API server writes it: spec.steps[0].timeout."""
    return "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in loc)[1:]


@pytest.mark.parametrize("path", INVALID, ids=[path.stem for path in INVALID])
def test_models_refuse_the_invalid_manifests_at_a_field_the_api_server_names(path: Path) -> None:
    text = path.read_text()
    document = yaml.safe_load(text)
    if path.stem in CEL_ONLY:
        MODELS[document["kind"]].model_validate(document)  # if this fails, shorten CEL_ONLY
        return
    named = [line.split(":")[1].strip() for line in text.splitlines() if line.startswith("# ex")]
    with pytest.raises(ValidationError) as raised:
        MODELS[document["kind"]].model_validate(document)
    found = [api_path(error["loc"]) for error in raised.value.errors()]
    assert any(
        field == loc or field.startswith((f"{loc}.", f"{loc}["))
        for field in named
        for loc in found
        if loc != "spec"
    ), (named, found)
