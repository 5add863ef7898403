"""Waiting for the admission policies of policies/ to be enforced on a fresh control plane.

The API server enforces a policy a moment after it is created, and until it knows the new kinds
its admission answers 503 ("Resource kind not found") to creates of them. The policies count as
loaded once a Run billed to another account is refused by the accounts policy, and an Agent and
a Template are admitted (server-side dry runs: nothing is created)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from nofx_dev.processes import wait_until
from nofx_dev.tools import tool_path

PROBES = {
    "Run": {"account": "another", "steps": [{"name": "a", "agentRef": {"name": "a"}}]},
    "Agent": {"image": "example.invalid/probe:1"},
    "Template": {"steps": [{"name": "a", "agentRef": {"name": "a"}}]},
}
REFUSED_RUN = "is not the account of namespace"


def enforced(kubeconfig: Path) -> bool:
    for kind, spec in PROBES.items():
        probe = {"apiVersion": "nofx.dev/v1alpha1", "kind": kind,
                 "metadata": {"name": "probe"}, "spec": spec}  # fmt: skip
        result = subprocess.run(
            [str(tool_path("kubectl")), "--kubeconfig", str(kubeconfig),
             "create", "--dry-run=server", "-f", "-"],
            input=json.dumps(probe), text=True, capture_output=True, check=False,
        )  # fmt: skip
        admitted = result.returncode == 0
        if kind == "Run" and (admitted or REFUSED_RUN not in result.stderr):
            return False
        if kind != "Run" and not admitted:
            return False
    return True


def wait_until_enforced(kubeconfig: Path, timeout: float = 60) -> None:
    wait_until(lambda: enforced(kubeconfig), timeout, "the admission policies")
