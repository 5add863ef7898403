"""`nofx sample-agent`: reports the outputs its Agent declares as the termination message, and
fails with a message the operator shows when they cannot be a step's outputs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from nofx import cli

ENVIRONMENT = {
    "NOFX_RUN": "dag-dark-mode",
    "NOFX_STEP": "plan",
    "NOFX_ATTEMPT": "1",
    "NOFX_INPUTS": '{"task":"Dark mode"}',
}


def test_writes_the_declared_outputs_to_the_termination_log(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for name, value in ENVIRONMENT.items():
        monkeypatch.setenv(name, value)
    log = tmp_path / "termination-log"
    outputs = {"plan": "1. API flag 2. CSS", "task": "dark mode", "files": 3}
    argv = ["sample-agent", "--outputs", json.dumps(outputs), "--termination-log", str(log)]
    assert cli.main(argv) == 0
    assert json.loads(log.read_text()) == outputs
    line = json.loads(capsys.readouterr().out)
    assert line["sampleAgent"] == {
        "run": "dag-dark-mode",
        "step": "plan",
        "attempt": "1",
        "inputs": {"task": "Dark mode"},
    }


def test_a_for_each_item_is_logged(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("NOFX_ITEM", '"nofx-dev/api"')
    monkeypatch.setenv("NOFX_INDEX", "0")
    monkeypatch.setenv("NOFX_TERMINATION_LOG", str(tmp_path / "log"))
    assert cli.main(["sample-agent"]) == 0  # the path from the environment; no outputs: {}
    assert (tmp_path / "log").read_text() == "{}"
    context = json.loads(capsys.readouterr().out)["sampleAgent"]
    assert (context["item"], context["index"]) == ("nofx-dev/api", 0)


@pytest.mark.parametrize(
    ("outputs", "message"),
    [
        ("not json", "--outputs is not JSON"),
        ('["a list"]', "--outputs must be a JSON object"),
        (json.dumps({f"k{i}": i for i in range(33)}), "at most 32 keys and 4096 bytes"),
        (json.dumps({"big": "x" * 4096}), "at most 32 keys and 4096 bytes"),
        (
            json.dumps({"nofx.usage": {"model": "m", "outputTokens": -1}}),
            "--outputs: outputs nofx.usage.outputTokens: must not be negative, got -1",
        ),
    ],
)
def test_outputs_the_operator_would_refuse_fail_the_step(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], outputs: str, message: str
) -> None:
    log = tmp_path / "termination-log"
    assert cli.main(["sample-agent", "--outputs", outputs, "--termination-log", str(log)]) == 2
    assert message in capsys.readouterr().err
    assert message in log.read_text()
