"""The API types: samples validate, objects round-trip, and the generated schema is one the API
server accepts and `kubectl explain` can explain."""

from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import ValidationError

from nofx.api import RESOURCES, Agent, Run, RunSpec, Template
from nofx.api.common import LocalObjectReference, parse_duration
from nofx.api.crdgen import crd
from nofx.api.run import MUTABLE_SPEC_FIELDS

ROOT = Path(__file__).resolve().parents[2]
MODELS = {resource.model_fields["kind"].default: resource for resource in RESOURCES}


def load_samples() -> list[dict[str, Any]]:
    """The sample Agents, Templates and Runs (prerequisites.yaml holds core objects)."""
    return [
        doc
        for path in sorted((ROOT / "manifests" / "samples" / "base").glob("*.yaml"))
        for doc in yaml.safe_load_all(path.read_text())
        if doc and doc.get("apiVersion", "").startswith("nofx.dev/")
    ]


def is_contained(part: Any, whole: Any) -> bool:
    """Whether every key and value of part is in whole (whole may add defaults)."""
    if isinstance(part, dict):
        return isinstance(whole, dict) and all(
            key in whole and is_contained(value, whole[key]) for key, value in part.items()
        )
    if isinstance(part, list):
        return (
            isinstance(whole, list)
            and len(part) == len(whole)
            and all(map(is_contained, part, whole))
        )
    return bool(part == whole)


def test_samples_cover_every_kind_and_pattern() -> None:
    names = {(doc["kind"], doc["metadata"]["name"]) for doc in load_samples()}
    for agent in ("planner", "coder", "reviewer", "pr-opener"):
        assert ("Agent", agent) in names
    for template in ("linear", "dag", "pair", "release", "hierarchical", "swarm"):
        assert ("Template", template) in names
    referenced = {
        doc["spec"]["templateRef"]["name"]
        for doc in load_samples()
        if doc["kind"] == "Run" and "templateRef" in doc["spec"]
    }
    assert referenced == {"linear", "dag", "pair", "release", "hierarchical", "swarm"}


@pytest.mark.parametrize(
    "doc", load_samples(), ids=lambda doc: f"{doc['kind']}/{doc['metadata']['name']}"
)
def test_sample_validates_and_round_trips(doc: dict[str, Any]) -> None:
    model = MODELS[doc["kind"]].model_validate(doc)
    dumped = model.to_dict()
    assert is_contained(doc, dumped), "dumping lost or changed a field of the sample"
    assert type(model).model_validate(dumped) == model


def test_snake_case_names_are_accepted_in_python() -> None:
    spec = RunSpec(template_ref=LocalObjectReference(name="linear"), ttl_seconds_after_finished=60)
    assert spec.to_dict() == {
        "templateRef": {"name": "linear"},
        "ttlSecondsAfterFinished": 60,
        "cancel": False,
        "suspend": False,
    }


@pytest.mark.parametrize(
    ("model", "doc", "field"),
    [
        (Agent, {"spec": {}}, "image"),
        (Agent, {"spec": {"image": "x", "maxConcurrentSteps": 0}}, "maxConcurrentSteps"),
        (Agent, {"spec": {"image": "x", "resources": {"limits": {"cpu": "lots"}}}}, "cpu"),
        (Template, {"spec": {"steps": []}}, "steps"),
        (Template, {"spec": {"steps": [{"name": "Build"}]}}, "name"),
        (Template, {"spec": {"steps": [{"name": "a", "retries": {"limit": 11}}]}}, "limit"),
        (Template, {"spec": {"steps": [{"name": "a", "timeout": "5 minutes"}]}}, "timeout"),
        (Template, {"spec": {"steps": [{"name": "a", "typo": 1}]}}, "typo"),
        (Run, {"spec": {"ttlSecondsAfterFinished": "soon"}}, "ttlSecondsAfterFinished"),
    ],
)
def test_models_reject_what_the_schema_rejects(model: Any, doc: dict[str, Any], field: str) -> None:
    with pytest.raises(ValidationError, match=field):
        model.model_validate(doc)


def test_inline_plan_declares_given_parameters_by_their_type() -> None:
    spec = RunSpec.model_validate(
        {
            "parameters": {"repo": "a/b", "count": 3, "repos": ["x"], "dryRun": True},
            "steps": [{"name": "fix", "agentRef": {"name": "coder"}}],
        }
    )
    plan = spec.inline_template()
    assert plan is not None
    assert {p.name: p.type for p in plan.parameters or []} == {
        "repo": "string",
        "count": "integer",
        "repos": "array",
        "dryRun": "boolean",
    }
    assert RunSpec.model_validate({"templateRef": {"name": "x"}}).inline_template() is None


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("30s", 30), ("5m", 300), ("1h30m", 5400), ("1.5h", 5400), ("250ms", 0.25)],
)
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text) == timedelta(seconds=seconds)


@pytest.mark.parametrize("text", ["", "90 minutes", "5", "1d"])
def test_parse_duration_rejects_other_syntax(text: str) -> None:
    with pytest.raises(ValueError, match="invalid duration"):
        parse_duration(text)


# --- the generated schema ------------------------------------------------------------------


def schema_nodes(node: dict[str, Any], path: str) -> list[tuple[str, dict[str, Any]]]:
    """Every schema node under node with its path, e.g. spec.steps[].name."""
    found = [(path, node)]
    for name, child in node.get("properties", {}).items():
        found += schema_nodes(child, f"{path}.{name}")
    if isinstance(node.get("additionalProperties"), dict):
        found += schema_nodes(node["additionalProperties"], f"{path}{{}}")
    if "items" in node:
        found += schema_nodes(node["items"], f"{path}[]")
    return found


CRDS = {resource.kind_info.plural: crd(resource) for resource in RESOURCES}
NODES = [
    (f"{plural}:{path}", node)
    for plural, definition in CRDS.items()
    for path, node in schema_nodes(
        definition["spec"]["versions"][0]["schema"]["openAPIV3Schema"], ""
    )
]


def test_every_property_has_a_description() -> None:
    undescribed = [
        f"{path}.{name}"
        for path, node in NODES
        for name, child in node.get("properties", {}).items()
        if not child.get("description") and not (path.endswith(":") and name == "metadata")
    ]
    assert undescribed == []


def test_schema_is_structural() -> None:
    for path, node in NODES:
        for keyword in ("$ref", "$defs", "anyOf", "oneOf", "allOf", "title", "nullable"):
            assert keyword not in node, f"{path} has {keyword}"
        assert "type" in node or node.get("x-kubernetes-preserve-unknown-fields"), path
        assert not ("properties" in node and "additionalProperties" in node), path
        assert node.get("default", "") is not None, f"{path} defaults to null"


def test_every_string_list_and_map_is_bounded() -> None:
    unbounded = []
    for path, node in NODES:
        kind = node.get("type")
        if path.endswith((":.apiVersion", ":.kind")):
            continue  # the API server checks these itself
        if kind == "string" and not ({"maxLength", "enum"} & node.keys() or "format" in node):
            unbounded.append(f"{path}: maxLength")
        if kind == "array" and "maxItems" not in node:
            unbounded.append(f"{path}: maxItems")
        is_map = "additionalProperties" in node or node.get("x-kubernetes-preserve-unknown-fields")
        if kind == "object" and is_map and "maxProperties" not in node:
            unbounded.append(f"{path}: maxProperties")
    assert unbounded == []


def test_run_spec_immutability_rule_covers_every_other_field() -> None:
    spec = CRDS["runs"]["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    rule = next(
        entry["rule"]
        for entry in spec["x-kubernetes-validations"]
        if entry["message"].startswith("spec is immutable")
    )
    for name in spec["properties"]:
        assert (f"self.{name} == oldSelf.{name}" in rule) == (name not in MUTABLE_SPEC_FIELDS)


def test_kinds_are_discoverable_with_kubectl() -> None:
    assert {plural: d["spec"]["names"]["shortNames"] for plural, d in CRDS.items()} == {
        "agents": ["nxa"],
        "templates": ["nxt"],
        "runs": ["nxr"],
        "schedules": ["nxs"],
    }
    for definition in CRDS.values():
        assert definition["spec"]["names"]["categories"] == ["nofx"]
        version = definition["spec"]["versions"][0]
        assert version["subresources"] == {"status": {}}
        assert version["additionalPrinterColumns"][-1]["name"] == "Age"
    run_columns = CRDS["runs"]["spec"]["versions"][0]["additionalPrinterColumns"]
    assert [column["jsonPath"] for column in run_columns] == [
        ".status.phase",
        ".status.progress",
        ".spec.templateRef.name",
        ".status.account",
        ".status.queueName",
        ".metadata.creationTimestamp",
    ]


def test_invalid_manifests_are_single_objects_with_an_expectation() -> None:
    paths = sorted((ROOT / "tests" / "e2e" / "invalid").glob("*.yaml"))
    assert len(paths) >= 14
    for path in paths:
        text = path.read_text()
        first_line = text.splitlines()[0]
        assert first_line.startswith("# expect: ") and first_line[10:].strip(), path.name
        docs = [doc for doc in yaml.safe_load_all(text) if doc]
        assert len(docs) == 1 and docs[0]["kind"] in MODELS, path.name
