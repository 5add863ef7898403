"""Jobs that kwok plays on the local control plane, for tests and the benchmark: one Pod, no
retry, its container's run told by annotations (see kwok-stages.yaml: kwok.nofx.dev/duration,
exit-code, message, fail-attempts), and fit for namespaces that enforce the restricted Pod
Security Standard, as test namespaces do."""

from __future__ import annotations

from typing import Any


def played_job(name: str, annotations: dict[str, str] | None = None) -> dict[str, Any]:
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name},
        "spec": {
            "backoffLimit": 0,
            "template": {
                "metadata": {"annotations": annotations or {}},
                "spec": {
                    "restartPolicy": "Never",
                    "securityContext": {
                        "runAsNonRoot": True,
                        "runAsUser": 65532,
                        "seccompProfile": {"type": "RuntimeDefault"},
                    },
                    "containers": [
                        {
                            "name": "main",
                            "image": "example.invalid/step:1",
                            "securityContext": {
                                "allowPrivilegeEscalation": False,
                                "capabilities": {"drop": ["ALL"]},
                            },
                        }
                    ],
                },
            },
        },
    }
