"""`make demo` as a newcomer runs it: the whole product, Postgres side included, in one command
that stops everything it started."""

from __future__ import annotations

import os
import subprocess
import sys

from .conftest import REPO


def test_the_demo_runs_the_samples_and_shows_what_postgres_recorded() -> None:
    demo = subprocess.run(
        [sys.executable, "-m", "nofx_dev.demo"],
        cwd=REPO, env=os.environ, capture_output=True, text=True, timeout=540,
    )  # fmt: skip
    out = demo.stdout
    assert demo.returncode == 0, out[-3000:] + demo.stderr[-3000:]
    timeline = out.split("$ nofx audit dag-dark-mode\n")[1].split("$ nofx")[0]
    assert "RunRunning" in timeline and "RunSucceeded" in timeline
    assert "nofx-admin" in timeline, "the creator of the Run, as the API server authenticated it"
    assert "every hash chain verifies" in out
    usage = out.split("$ nofx usage --account team-web")[1].split("$ ")[0]
    assert "coder" in usage, usage
    history = out.split("$ nofx template history dag\n")[1].split("\n\n")[0]
    assert len(history.strip().splitlines()) == 3, history  # a header and two versions
    assert "stopped every process it started" in out
