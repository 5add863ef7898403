"""The samples as a person applies them: the overlays render with `kubectl kustomize`, and on
the local control plane every sample Agent reports exactly what it reports on a real cluster."""

from __future__ import annotations

import itertools
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import uuid
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
    assert kinds == [
        "Agent",
        "ConfigMap",
        "Run",
        "Schedule",
        "Secret",
        "ServiceAccount",
        "Template",
    ]
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
        assert annotations["kwok.nofx.dev/duration"] == "1s", name
        simulated = parse_outputs(annotations["kwok.nofx.dev/message"])
        assert simulated == parse_outputs(spec["args"][1]), name
    # Nothing else changes: the same objects, the Agents only gain the kwok annotations.
    for spec in local_agents.values():
        for key in ("kwok.nofx.dev/duration", "kwok.nofx.dev/message"):
            del spec["podAnnotations"][key]
        if not spec["podAnnotations"]:
            del spec["podAnnotations"]
    assert local == base


# --- the README's commands, as written ---------------------------------------------------------

FENCE = re.compile(r"^```(\S+)([^\n]*)\n(.*?)^```$", re.MULTILINE | re.DOTALL)


def readme_blocks(heading: str) -> list[tuple[str, str]]:
    """The shell blocks of one README section: (what follows ```sh, the commands)."""
    text = (REPO / "README.md").read_text()
    start = text.index(f"\n## {heading}\n")
    end = text.find("\n## ", start + 1)
    section = text[start : end if end != -1 else len(text)]
    return [
        (extra.strip(), body)
        for language, extra, body in FENCE.findall(section)
        if language == "sh"
    ]


# Each command's start time goes to stderr (bash -x with this prompt), so each step is timed.
TRACE = "set -euo pipefail\nexport PS4='+ [$(date +%s.%N)] '\nset -x\n"


def bash(script: str, env: dict[str, str], log: Path) -> str:
    result = subprocess.run(
        ["bash", "-c", TRACE + script],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    log.write_text(f"{result.stderr}+ [{time.time()}] \n")  # when it ended
    print(result.stdout, end="")
    assert result.returncode == 0, f"{script}\nexited {result.returncode}:\n{result.stderr[-4000:]}"
    return result.stdout


def step_timings(*traces: Path) -> list[tuple[float, str]]:
    """(seconds, command) of each traced top-level command, from consecutive start times."""
    starts: list[tuple[float, str]] = []
    for trace in traces:
        for line in trace.read_text().splitlines():
            match = re.match(r"^\+ \[(\d+\.\d+)\] ?(.*)$", line)  # one '+': not nested
            if match and not match[2].startswith(("export PS4", "set -x")):
                starts.append((float(match[1]), match[2]))
    return [
        (later[0] - start, command)
        for (start, command), later in itertools.pairwise(starts)
        if command
    ]


def test_readme_develop_locally_and_the_resources_run_as_written(tmp_path: Path) -> None:
    develop = readme_blocks("Develop locally")
    resources = readme_blocks("The resources")
    assert [extra for extra, _ in develop] == ["", "second-terminal", "", ""], develop
    assert develop[-1][1].strip() == "make dev-down"
    assert len(resources) == 1
    (_, setup), (_, operator), (_, approve_and_read), (_, teardown) = develop

    # Postgres runs as another user: the state lives under /tmp, not in pytest's private dir.
    state = Path(f"/tmp/nofx-readme-{uuid.uuid4().hex[:8]}")
    env = {**os.environ, "NOFX_DEV_DIR": str(state)}
    env.pop("KUBECONFIG", None)
    env.pop("NOFX_DATABASE_URL", None)
    terminal = tmp_path / "terminal.env"  # the first terminal's environment between steps
    traces = [tmp_path / f"trace-{n}.log" for n in range(3)]
    second_terminal: subprocess.Popen[bytes] | None = None
    try:
        bash(f"{setup}\nexport -p > {terminal}\n", env, traces[0])
        with open(tmp_path / "operator.log", "wb") as operator_log:
            second_terminal = subprocess.Popen(
                ["bash", "-c", operator],
                cwd=REPO,
                env=env,
                stdout=operator_log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group, as in a terminal
            )
        output = bash(
            f"source {terminal}\n{resources[0][1]}\n{approve_and_read}\n"
            f"kubectl get runs -o json > {tmp_path / 'runs.json'}\n",
            env,
            traces[1],
        )
        # Ctrl-C in the second terminal: SIGINT to its foreground process group.
        os.killpg(second_terminal.pid, signal.SIGINT)
        assert second_terminal.wait(60) is not None
        bash(f"source {terminal}\n{teardown}", env, traces[2])
    finally:
        if second_terminal is not None and second_terminal.poll() is None:
            os.killpg(second_terminal.pid, signal.SIGKILL)
        subprocess.run(
            [sys.executable, "-m", "nofx_dev", "down", "--state-dir", str(state)],
            env=env,
            check=False,
        )
        shutil.rmtree(state, ignore_errors=True)

    runs = json.loads((tmp_path / "runs.json").read_text())["items"]
    phases = {run["metadata"]["name"]: run["status"]["phase"] for run in runs}
    samples = [doc for doc in kustomize(SAMPLES / "local") if doc["kind"] == "Run"]
    assert {doc["metadata"]["name"] for doc in samples} <= set(phases)
    assert set(phases.values()) == {"Succeeded"}, phases  # the child Run of hierarchical too
    [release] = [run for run in runs if run["metadata"]["name"] == "release-1-4-0"]
    assert release["spec"]["approvals"][0]["step"] == "publish"
    assert "every hash chain verifies" in output
    assert re.search(r"\bplanner\b.*USD", output), "nofx usage shows no planner usage"

    print("\nREADME step timings:")
    for seconds, command in step_timings(*traces):
        print(f"{seconds:7.1f} s  {command}")
