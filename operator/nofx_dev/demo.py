"""`make demo`: the real control plane on loopback, the CRDs, the operator, and the samples.

kwok plays the kubelet and runs no container, so the samples are applied with the overlay
`manifests/samples/local`: each sample Agent gets the Pod annotations that tell kwok how long its
steps run and what they report (the outputs its Agent declares to `nofx sample-agent`).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from datetime import datetime
from pathlib import Path

from nofx_dev.controlplane import ControlPlane
from nofx_dev.processes import ManagedProcess, free_port, wait_until
from nofx_dev.tools import REPO_ROOT, tool_path

DEMO_RUN = "dag-dark-mode"


class Demo:
    def __init__(self, state_dir: Path) -> None:
        self.plane = ControlPlane(state_dir)
        self.operator: ManagedProcess | None = None

    def kubectl(self, *args: str, stdin: str | None = None, show: bool = True) -> str:
        if show:
            print(f"$ kubectl {' '.join(args)}", flush=True)
        result = subprocess.run(
            [str(tool_path("kubectl")), "--kubeconfig", str(self.plane.kubeconfig), *args],
            input=stdin,
            cwd=REPO_ROOT,  # paths as a person in the checkout types them
            text=True,
            capture_output=True,
            check=False,
        )
        if result.returncode != 0:
            raise RuntimeError(f"kubectl {' '.join(args)}: {result.stderr.strip()}")
        if show and result.stdout.strip():
            print(result.stdout.rstrip(), flush=True)
        return result.stdout

    def nofx(self, *args: str) -> None:
        print(f"$ nofx {' '.join(args)}", flush=True)
        kubeconfig = ["--kubeconfig", str(self.plane.kubeconfig)]
        subprocess.run([sys.executable, "-m", "nofx.cli", *args, *kubeconfig], check=True)

    def start(self) -> None:
        self.plane.start()
        print(f"control plane ready in {self.plane.startup_seconds:.1f} s at {self.plane.server}\n")
        self.kubectl("apply", "--server-side", "-f", str(REPO_ROOT / "crds"))
        health = free_port()
        self.operator = ManagedProcess(
            "nofx-operator",
            [
                sys.executable,
                "-m",
                "nofx.cli",
                "operator",
                "--standalone",
                "--kubeconfig",
                str(self.plane.kubeconfig),
                "--metrics-port",
                str(free_port()),
                "--health-port",
                str(health),
            ],
            self.plane.state_dir / "logs" / "operator.log",
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        self.operator.start()
        wait_until(lambda: self._healthy(health), 60, "the operator")
        print(f"\noperator running (log: {self.operator.log_path})\n")

    def _healthy(self, port: int) -> bool:
        assert self.operator is not None
        self.operator.check_alive()
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1).close()
        except OSError:
            return False
        return True

    def run_samples(self) -> None:
        # Agents, Templates and Runs in one apply: a Run whose Template or Agent comes a moment
        # later waits for it. The Agents carry their kwok annotations from the start.
        self.kubectl("apply", "-k", "manifests/samples/local")
        print()
        self.kubectl("wait", f"run/{DEMO_RUN}", "--for=condition=Succeeded", "--timeout=120s")
        print()
        self.print_steps(DEMO_RUN)
        print()
        self.kubectl(
            "get", "jobs", "-l", f"nofx.dev/run={DEMO_RUN}",
            "-L", "nofx.dev/step,nofx.dev/attempt,nofx.dev/agent",
        )  # fmt: skip
        print()
        self.kubectl(
            "get", "events", "--field-selector", f"involvedObject.name={DEMO_RUN}",
            "--sort-by=.metadata.creationTimestamp",
            "-o", "custom-columns=TYPE:.type,REASON:.reason,MESSAGE:.message",
        )  # fmt: skip
        print()
        self.kubectl("get", "runs")
        print("\n# the release waits for a person: approve it with the CLI")
        self.nofx("approve", "release-1-4-0", "--step", "publish")
        self.kubectl("wait", "runs", "--all", "--for=condition=Succeeded", "--timeout=120s")
        print()
        self.kubectl("get", "nofx")

    def print_steps(self, run: str) -> None:
        body = json.loads(self.kubectl("get", "run", run, "-o", "json", show=False))
        status = body["status"]
        print(f"Run {run}: {status['phase']} ({status['progress']} steps), usage {status['usage']}")
        header = f"{'STEP':<10} {'PHASE':<10} {'ATTEMPTS':<9} {'SECONDS':<8} {'OUTPUTS'}"
        print(header)
        for entry in status["steps"]:
            seconds = ""
            if entry.get("startedAt") and entry.get("finishedAt"):
                started = datetime.fromisoformat(entry["startedAt"].replace("Z", "+00:00"))
                finished = datetime.fromisoformat(entry["finishedAt"].replace("Z", "+00:00"))
                seconds = f"{(finished - started).total_seconds():.1f}"
            outputs = json.dumps(entry.get("outputs", {}))[:60] or entry.get("message", "")
            print(
                f"{entry['name']:<10} {entry['phase']:<10} {entry.get('attempts', 0)!s:<9} "
                f"{seconds:<8} {outputs}"
            )

    def explain_failure(self) -> None:
        """What a person would look at first when the demo does not finish."""
        print("\nthe demo did not finish; the state of things:", file=sys.stderr)
        try:
            print(self.kubectl("get", "runs,jobs", "-o", "wide", show=False), file=sys.stderr)
            self.print_steps(DEMO_RUN)
        except RuntimeError as error:
            print(error, file=sys.stderr)
        if self.operator is not None:
            lines = self.operator.log_path.read_text(errors="replace").splitlines()
            print("operator log (last 40 lines):", *lines[-40:], sep="\n", file=sys.stderr)

    def stop(self) -> None:
        if self.operator is not None:
            self.operator.stop()
        self.plane.stop()


def main() -> int:
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="nofx-demo-") as state_dir:
        demo = Demo(Path(state_dir))
        try:
            demo.start()
            demo.run_samples()
        except Exception:
            demo.explain_failure()
            raise
        finally:
            demo.stop()
    print(f"\ndemo done in {time.monotonic() - started:.0f} s; stopped every process it started")
    return 0


if __name__ == "__main__":
    sys.exit(main())
