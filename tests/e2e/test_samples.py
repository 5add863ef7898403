"""The samples as a person applies them: the overlays render with `kubectl kustomize`, and on
the local control plane every sample Agent reports exactly what it reports on a real cluster."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import yaml

from nofx.sample_agent import parse_outputs
from nofx_dev.tools import tool_path

REPO = Path(__file__).resolve().parents[2]
SAMPLES = REPO / "manifests" / "samples"


def kustomize(folder: Path) -> list[dict[str, Any]]:
    rendered = subprocess.run(
        [str(tool_path("kubectl")), "kustomize", str(folder)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return [doc for doc in yaml.safe_load_all(rendered) if doc]


def agents(docs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {doc["metadata"]["name"]: doc["spec"] for doc in docs if doc["kind"] == "Agent"}


def test_the_base_runs_the_sample_agent_of_the_operators_image() -> None:
    docs = kustomize(SAMPLES / "base")
    kinds = sorted({doc["kind"] for doc in docs})
    assert kinds == ["Agent", "ConfigMap", "Run", "Secret", "ServiceAccount", "Template"]
    for name, spec in agents(docs).items():
        assert spec["image"].startswith("ghcr.io/nofx-dev/nofx-operator:"), name
        assert spec["command"] == ["nofx", "sample-agent"], name
        assert spec["args"][0] == "--outputs", name
        parse_outputs(spec["args"][1])
        assert not any(key.startswith("kwok.") for key in spec.get("podAnnotations", {})), name


def test_the_local_overlay_simulates_exactly_the_declared_outputs() -> None:
    base = kustomize(SAMPLES / "base")
    local = kustomize(SAMPLES / "local")
    local_agents = agents(local)
    assert set(local_agents) == {"planner", "coder", "reviewer", "pr-opener"}
    for name, spec in local_agents.items():
        annotations = spec["podAnnotations"]
        assert annotations["kwok.nofx.dev/duration"] == "1s"
        assert parse_outputs(annotations["kwok.nofx.dev/message"]) == parse_outputs(spec["args"][1])
    # Nothing else changes: the same objects, the Agents only gain the kwok annotations.
    for spec in local_agents.values():
        for key in ("kwok.nofx.dev/duration", "kwok.nofx.dev/message"):
            del spec["podAnnotations"][key]
        if not spec["podAnnotations"]:
            del spec["podAnnotations"]
    assert local == base
