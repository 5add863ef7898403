"""`make demo`: a real control plane on loopback, then a Job run to completion through it."""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

from nofx.localcluster.controlplane import ControlPlane
from nofx.localcluster.tools import tool_path

DEMO_JOB = """
apiVersion: batch/v1
kind: Job
metadata: {name: hello-kwok}
spec:
  backoffLimit: 0
  template:
    metadata:
      annotations: {kwok.nofx.dev/duration: 2s, kwok.nofx.dev/message: '{"greeting": "hello"}'}
    spec:
      restartPolicy: Never
      containers: [{name: main, image: example.invalid/hello:1}]
"""


def kubectl(plane: ControlPlane, *args: str, stdin: str | None = None) -> None:
    command = [str(tool_path("kubectl")), "--kubeconfig", str(plane.kubeconfig), *args]
    print("$ kubectl " + " ".join(args), flush=True)
    subprocess.run(command, input=stdin, text=True, check=True)


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="nofx-demo-") as state_dir:
        plane = ControlPlane(Path(state_dir))
        plane.start()
        try:
            print(f"control plane ready in {plane.startup_seconds:.1f} s at {plane.server}\n")
            kubectl(plane, "get", "nodes")
            kubectl(plane, "apply", "-f", "-", stdin=DEMO_JOB)
            kubectl(plane, "wait", "job/hello-kwok", "--for=condition=Complete", "--timeout=60s")
            kubectl(plane, "get", "jobs,pods", "-o", "wide")
            kubectl(
                plane,
                "get",
                "pods",
                "-l",
                "job-name=hello-kwok",
                "-o",
                "jsonpath=termination message: "
                "{.items[0].status.containerStatuses[0].state.terminated.message}{'\\n'}",
            )
        finally:
            plane.stop()
    print("stopped the control plane; no process left behind")
    return 0


if __name__ == "__main__":
    sys.exit(main())
