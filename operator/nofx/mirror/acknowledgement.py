"""Acknowledging written entries: removing exactly them from the Run's outbox (its status),
keeping any added since, with a patch guarded by the Run's resourceVersion."""

from __future__ import annotations

import logging
from functools import partial
from typing import Any

from nofx.api_errors import Conflict
from nofx.kube import Kube
from nofx.mirror import outbox
from nofx.mirror.run_body import RunKey

log = logging.getLogger("nofx.mirror")


def acknowledge(
    kube: Kube, key: RunKey, body: dict[str, Any], stored: set[tuple[Any, ...]]
) -> bool:
    """Removes the stored entries from the Run's outbox (body: the latest written, whose
    resourceVersion guards the patch); False (and logged) if that failed or kept conflicting:
    the Run is offered again later."""
    try:
        if remove_from_outbox(kube, key, body, stored):
            return True
        log.warning("acknowledgement kept conflicting; offered again later", extra={"run": key[1]})
    except Exception as error:
        log.warning("acknowledgement failed; offered again later: %s", error, extra={"run": key[1]})
    return False


def remove_from_outbox(
    kube: Kube, key: RunKey, body: dict[str, Any] | None, stored: set[tuple[Any, ...]]
) -> bool:
    """Removes the stored entries from the Run's outbox, keeping any added since; False if
    the Run kept changing. Tries the body it wrote from first; only a conflict (the Run
    changed meanwhile) costs a GET."""
    refetched = False
    for _ in range(5):
        if body is None:
            return True
        audit = (body.get("status") or {}).get("audit") or {}
        remaining = outbox.acknowledge(audit.get("pending") or [], stored)
        if len(remaining) == len(audit.get("pending") or []):
            return True
        try:
            patch = {"audit": {**audit, "pending": remaining or None}}
            version = body["metadata"]["resourceVersion"]
            # Nothing the reconciler reads changed: its watch event needs no reconcile (record).
            # Not after a GET: it may show a change the reconciler has not seen yet, and a
            # fresh list after a watch gap would fold that change's event into this write's.
            send = partial(kube.patch_status, "runs", *key, patch, version)
            kube.own_writes.write("runs", *key, send, record=not refetched)
            return True
        except Conflict:
            body, refetched = kube.get("runs", *key), True
    return False
