"""`make demo` as a newcomer runs it: the whole product, Postgres side included, in one command
that stops everything it started."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import urllib.request

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
    by_model = out.split("--by model\n")[1].split("\n\n")[0]
    assert re.search(r"\bcoder\s+claude-sonnet-4\s", by_model), by_model
    assert re.search(r"\breviewer\s+gpt-4.1-mini\s", by_model), by_model
    history = out.split("$ nofx template history dag\n")[1].split("\n\n")[0]
    assert len(history.strip().splitlines()) == 3, history  # a header and two versions
    assert "stopped every process it started" in out


def test_serve_keeps_it_running_with_the_console_until_interrupted() -> None:
    demo = subprocess.Popen(
        [sys.executable, "-m", "nofx_dev.demo", "--serve"],
        cwd=REPO, env=os.environ, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    assert demo.stdout is not None
    try:
        console = ""
        deadline = time.monotonic() + 300
        while not console and time.monotonic() < deadline:
            line = demo.stdout.readline()
            assert line, "the demo ended before it served the console"
            console = line.removeprefix("the console: ").strip() if "the console:" in line else ""
        page = urllib.request.urlopen(console, timeout=10).read().decode()
        assert "dag-dark-mode" in page and "<svg" in page  # the Run and its DAG
    finally:
        demo.send_signal(signal.SIGINT)
        rest, _ = demo.communicate(timeout=120)
    assert demo.returncode == 0 and "stopped every process it started" in rest
