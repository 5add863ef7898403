"""`make demo`: the whole product on loopback. The real control plane with the admission
policies, Postgres, the operator mirroring to it, and the samples; then what the mirror recorded:
the DAG Run's audit timeline, the chains' verification, the account's usage (per agent, and the
tokens per model its steps reported), a Template's history after an edit. `--serve` keeps
everything running until Ctrl-C.

kwok plays the kubelet and runs no container, so the samples are applied with the overlay
`manifests/samples/local`: each sample Agent gets the Pod annotations that tell kwok how long its
steps run and what they report (the outputs its Agent declares to `nofx sample-agent`).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from datetime import UTC, datetime
from pathlib import Path

from nofx_dev import policies
from nofx_dev.controlplane import ControlPlane
from nofx_dev.postgres import PostgresServer
from nofx_dev.processes import ManagedProcess, free_port, wait_until
from nofx_dev.tools import REPO_ROOT, tool_path

DEMO_RUN = "dag-dark-mode"
ACCOUNT = "team-web"  # the account of the namespace the samples go to
REGION = "demo"
# What the samples' Agents name: the namespace lets its Agents use them (policies/agent-access).
AGENT_ACCESS = {
    "nofx.dev/agent-service-accounts": "nofx-pr-opener",
    "nofx.dev/agent-secrets": "model-credentials,github",
}


class Demo:
    def __init__(self, state_dir: Path) -> None:
        self.plane = ControlPlane(state_dir)
        # Outside state_dir: as root, Postgres runs as another user, who must reach its files.
        self.postgres = PostgresServer(Path(tempfile.mkdtemp(prefix="nofx-demo-pg-")) / "server")
        self.operator: ManagedProcess | None = None
        self.console: ManagedProcess | None = None  # with --serve

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
        """A `nofx` command as a person types it, in the environment of `make dev-env`."""
        print(f"$ nofx {' '.join(args)}", flush=True)
        subprocess.run([sys.executable, "-m", "nofx.cli", *args], check=True, env=self.env)

    @property
    def env(self) -> dict[str, str]:
        return {
            **os.environ,
            "KUBECONFIG": str(self.plane.kubeconfig),
            "NOFX_DATABASE_URL": self.postgres.dsn,
            "NOFX_REGION": REGION,
            "PYTHONUNBUFFERED": "1",
        }

    def start(self) -> None:
        self.plane.start()
        print(f"control plane ready in {self.plane.startup_seconds:.1f} s at {self.plane.server}")
        self.postgres.start()
        print(f"Postgres ready at {self.postgres.dsn}\n")
        self.nofx("db", "migrate")
        self.kubectl("apply", "--server-side", "-f", str(REPO_ROOT / "crds"))
        self.kubectl("wait", "--for=condition=Established", "-f", str(REPO_ROOT / "crds"))
        print("\n# the platform admin's part: the admission policies, the namespace's account and")
        print("# what its Agents may use")
        self.kubectl("apply", "-k", "policies")
        self.kubectl("label", "namespace", "default", f"nofx.dev/account={ACCOUNT}")
        annotations = [f"{key}={value}" for key, value in AGENT_ACCESS.items()]
        self.kubectl("annotate", "namespace", "default", *annotations)
        policies.wait_until_enforced(self.plane.kubeconfig)
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
            env=self.env,
        )
        self.operator.start()
        wait_until(lambda: self._healthy(health), 60, "the operator")
        print(f"\noperator running (log: {self.operator.log_path})\n")

    def _healthy(self, port: int) -> bool:
        assert self.operator is not None
        self.operator.check_alive()
        return self._answers(f"http://127.0.0.1:{port}/healthz")

    @staticmethod
    def _answers(url: str) -> bool:
        try:
            urllib.request.urlopen(url, timeout=1).close()
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

    def show_the_record(self) -> None:
        """What the mirror keeps in Postgres once the Runs have finished."""
        wait_until(self._mirrored, 60, "the mirror to store every Run's audit events")
        print("\n# the audit trail in Postgres: who did what, when, hash-chained")
        self.nofx("audit", DEMO_RUN)
        self.nofx("audit", "verify")
        today = datetime.now(UTC).strftime("%Y-%m-%d")
        self.nofx("usage", "--account", ACCOUNT, "--since", today)
        print("\n# the tokens the steps reported (nofx.usage), priced per model by their Agents")
        self.nofx("usage", "--account", ACCOUNT, "--since", today, "--by", "model")
        print("\n# every version of a Template is kept: edit one and read its history")
        edit = {"spec": {"description": "Backend, frontend and docs in parallel, then one review."}}
        self.kubectl("patch", "template", "dag", "--type", "merge", "-p", json.dumps(edit))
        wait_until(self._edit_recorded, 30, "the Template's new version in Postgres")
        self.nofx("template", "history", "dag")

    def _mirrored(self) -> bool:
        runs = json.loads(self.kubectl("get", "runs", "-o", "json", show=False))["items"]
        return all(not (r["status"].get("audit") or {}).get("pending") for r in runs)

    def _edit_recorded(self) -> bool:
        history = subprocess.run(
            [sys.executable, "-m", "nofx.cli", "template", "history", "dag"],
            env=self.env, capture_output=True, text=True, check=False,
        )  # fmt: skip
        return len(history.stdout.strip().splitlines()) >= 3  # a header and two versions

    def serve(self) -> None:
        """Keeps everything running, with the web console, for a person to look around, until
        Ctrl-C."""
        port = free_port()
        self.console = ManagedProcess(
            "nofx-console",
            [sys.executable, "-m", "nofx.cli", "console", "--port", str(port)],
            self.plane.state_dir / "logs" / "console.log",
            env=self.env,
        )
        self.console.start()
        wait_until(lambda: self._answers(f"http://127.0.0.1:{port}/runs"), 30, "the console")
        print(f"\nthe console: http://127.0.0.1:{port}/runs/default/{DEMO_RUN}")
        print("everything keeps running; in another terminal:")
        print(f"  export KUBECONFIG={self.plane.kubeconfig} NOFX_DATABASE_URL={self.postgres.dsn}")
        print(f"  export NOFX_REGION={REGION}")
        print("  kubectl get runs; nofx audit dag-dark-mode; nofx usage --account team-web ...")
        print("stop with Ctrl-C", flush=True)
        signal.sigwait({signal.SIGINT, signal.SIGTERM})

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
        for process in (self.console, self.operator):
            if process is not None:
                process.stop()
        self.postgres.stop()
        shutil.rmtree(self.postgres.directory.parent, ignore_errors=True)
        self.plane.stop()


def main() -> int:
    parser = argparse.ArgumentParser(prog="make demo", description=__doc__)
    parser.add_argument("--serve", action="store_true", help="keep it all running until Ctrl-C")
    args = parser.parse_args()
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="nofx-demo-") as state_dir:
        demo = Demo(Path(state_dir))
        try:
            demo.start()
            demo.run_samples()
            demo.show_the_record()
            if args.serve:
                signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
                demo.serve()
        except Exception:
            demo.explain_failure()
            raise
        finally:
            demo.stop()
    print(f"\ndemo done in {time.monotonic() - started:.0f} s; stopped every process it started")
    return 0


if __name__ == "__main__":
    sys.exit(main())
