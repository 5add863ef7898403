"""A childRun step as a Run of its own: owned by its parent, labelled with its parent, the root
of its tree and its depth, billed to the parent's account."""

from __future__ import annotations

from typing import Any

from nofx.api.common import API_VERSION
from nofx.builders.labels import (
    ACCOUNT_LABEL,
    DEPTH_LABEL,
    MANAGED_BY,
    PARENT_LABEL,
    ROOT_LABEL,
    label_value,
)
from nofx.builders.ownership import owner_reference
from nofx.planner.facts import ChildRunRequest, RunView


def build_child_run(parent: RunView, account: str, request: ChildRunRequest) -> dict[str, Any]:
    """account: the parent's pinned account (the API server refuses any other). A child Run
    is queued where its parent is: it names the parent's queue, whatever its Template says."""
    spec: dict[str, Any] = {
        "templateRef": {"name": request.template},
        "parameters": request.parameters,
        "account": account,
    }
    if request.queue_name:
        spec["queueName"] = request.queue_name
    return {
        "apiVersion": API_VERSION,
        "kind": "Run",
        "metadata": {
            "name": request.name,
            "namespace": parent.namespace,
            "labels": {
                PARENT_LABEL: label_value(parent.name),
                ROOT_LABEL: parent.root_uid or parent.uid,
                DEPTH_LABEL: str(parent.depth + 1),
                ACCOUNT_LABEL: label_value(account),
                **MANAGED_BY,
            },
            "ownerReferences": [owner_reference(parent.name, parent.uid)],
        },
        "spec": spec,
    }
