"""The generated CRDs on the real API server: samples apply, kubectl shows them well, and bad
manifests are rejected with a message that names the field."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from ..conftest import Kubectl

# The CRDs are part of the smoke on the oldest supported Kubernetes (make smoke-oldest).
pytestmark = pytest.mark.oldest

REPO = Path(__file__).resolve().parents[2]
INVALID = sorted((REPO / "tests" / "e2e" / "invalid").glob("*.yaml"))


def test_every_sample_applies_and_kubectl_get_nofx_lists_them(
    crds: None, kubectl: Kubectl, namespace: str
) -> None:
    for sample in ("prerequisites.yaml", "agents.yaml", "templates.yaml", "runs.yaml"):
        kubectl(
            "create", "-n", namespace, "-f", str(REPO / "manifests" / "samples" / "base" / sample)
        )
    listed = kubectl("get", "nofx", "-n", namespace, "-o", "name").split()
    kinds = {name.split("/")[0] for name in listed}
    assert kinds == {"agent.nofx.dev", "template.nofx.dev", "run.nofx.dev"}
    assert "agent.nofx.dev/planner" in listed and "template.nofx.dev/dag" in listed
    table = kubectl("get", "runs", "-n", namespace)
    assert table.split("\n")[0].split() == [
        "NAME",
        "PHASE",
        "PROGRESS",
        "TEMPLATE",
        "ACCOUNT",
        "QUEUE",
        "AGE",
    ]
    assert kubectl("get", "nxr", "-n", namespace, "-o", "name").split() == [
        n for n in listed if n.startswith("run.")
    ]


def test_kubectl_explain_prints_the_field_descriptions(crds: None, kubectl: Kubectl) -> None:
    steps = kubectl("explain", "run.spec.steps")
    assert "dependsOn" in steps and "Steps that must succeed before this one starts." in steps
    assert "it must be the namespace's account" in kubectl("explain", "run.spec.account")
    assert "Container image that performs the agent's work." in kubectl(
        "explain", "agent.spec.image"
    )


@pytest.mark.parametrize("manifest", INVALID, ids=[path.stem for path in INVALID])
def test_invalid_manifest_is_rejected_naming_the_field(
    crds: None, kubectl: Kubectl, namespace: str, manifest: Path
) -> None:
    expected = expectations(manifest.read_text())
    assert expected, f"{manifest.name} lacks its '# expect:' line"
    result = kubectl.run("create", "-n", namespace, "-f", str(manifest), check=False)
    assert result.returncode != 0, f"{manifest.name} was accepted"
    for text in expected:
        assert text in result.stderr, result.stderr


def expectations(manifest: str) -> list[str]:
    """The texts of the leading `# expect: ` lines: each must be in the rejection."""
    lines = iter(manifest.splitlines())
    return [line.removeprefix("# expect: ") for line in lines if line.startswith("# expect: ")]


BIG = "x" * 65_537


@pytest.mark.parametrize(
    ("kind", "spec", "expected"),
    [
        (
            "Template",
            {
                "parameters": [{"name": "p", "default": BIG}],
                "steps": [{"name": "a", "agentRef": {"name": "x"}}],
            },
            "spec.parameters[0].default: Too long: may not be more than 65536 bytes",
        ),
        (
            "Template",
            {
                "parameters": [{"name": "p", "enum": [BIG]}],
                "steps": [{"name": "a", "agentRef": {"name": "x"}}],
            },
            "spec.parameters[0].enum[0]: Too long: may not be more than 65536 bytes",
        ),
        (
            "Run",
            {
                "templateRef": {"name": "t"},
                "approvals": [{"step": f"s{i}", "approvedBy": "x"} for i in range(121)],
            },
            "spec.approvals: Too many: 121: must have at most 120 items",
        ),
    ],
    ids=["default-64KB", "enum-64KB", "121-approvals"],
)
def test_oversized_input_is_rejected_naming_the_field(
    crds: None, kubectl: Kubectl, namespace: str, kind: str, spec: dict[str, Any], expected: str
) -> None:
    manifest = {"apiVersion": "nofx.dev/v1alpha1", "kind": kind, "metadata": {"name": "big"}}
    manifest["spec"] = spec
    result = kubectl.run(
        "create", "-n", namespace, "-f", "-", input=json.dumps(manifest), check=False
    )
    assert result.returncode != 0 and expected in result.stderr, result.stderr


def test_run_spec_is_immutable_except_controls(
    crds: None, kubectl: Kubectl, namespace: str
) -> None:
    kubectl("create", "-n", namespace, "-f", "-", input=_INLINE_RUN)
    kubectl(
        "patch", "-n", namespace, "run/immutable", "--type=merge", "-p", '{"spec":{"suspend":true}}'
    )
    result = kubectl.run(
        "patch",
        "-n",
        namespace,
        "run/immutable",
        "--type=merge",
        "-p",
        '{"spec":{"parameters":{"x":"changed"}}}',
        check=False,
    )
    assert result.returncode != 0
    assert "spec is immutable once the Run is created" in result.stderr


_INLINE_RUN = """
apiVersion: nofx.dev/v1alpha1
kind: Run
metadata: {name: immutable}
spec:
  parameters: {x: original}
  steps:
  - name: only
    agentRef: {name: nobody}
"""
