"""The mirror's writer: a background thread that moves outbox entries from Runs' status into
Postgres in batches, records Agent and Template versions, and never blocks reconciling.

Run events hand it the latest body of each Run (cheap: a dict assignment); the thread writes
every queued Run's pending entries in one transaction, then removes exactly those entries from
each Run's status. If Postgres is down it keeps retrying with backoff; the entries stay in the
Runs' status meanwhile, so a restarted operator finds them again.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from nofx import metrics
from nofx.kube import Conflict, Kube
from nofx.mirror import outbox
from nofx.mirror.records import AuditEvent, RunRecord, SpecVersion, UsageRecord
from nofx.mirror.store import ChainGapError, Store

log = logging.getLogger("nofx.mirror")

RunKey = tuple[str, str]
BATCH_RUNS = 200  # Runs per transaction
ACK_THREADS = 8  # acknowledgements in flight at once: each is one API round trip
RUN_METADATA = ("namespace", "name", "uid", "resourceVersion", "creationTimestamp")
RUN_STATUS = ("phase", "startedAt", "finishedAt", "audit")
MAX_BACKOFF = 30.0


@dataclass(frozen=True)
class Deletion:
    kind: str
    namespace: str
    name: str
    uid: str
    at: datetime
    actor: str | None


def mirrored_part(body: Mapping[str, Any]) -> dict[str, Any]:
    """What the mirror reads of a Run: with thousands of Runs queued while Postgres is slow or
    down, holding their whole bodies (pinned specs, every step) would cost hundreds of MB."""
    metadata, spec, status = body["metadata"], body.get("spec") or {}, body.get("status") or {}
    return {
        "metadata": {key: metadata.get(key) for key in RUN_METADATA},
        "spec": {key: spec[key] for key in ("templateRef", "account") if key in spec},
        "status": {key: status[key] for key in RUN_STATUS if key in status},
    }


def run_record(body: dict[str, Any]) -> RunRecord:
    metadata, spec, status = body["metadata"], body.get("spec") or {}, body.get("status") or {}

    def when(value: str | None) -> datetime | None:
        return datetime.fromisoformat(value.replace("Z", "+00:00")) if value else None

    return RunRecord(
        uid=metadata["uid"],
        namespace=metadata["namespace"],
        name=metadata["name"],
        template=(spec.get("templateRef") or {}).get("name"),
        account=spec.get("account", "default"),
        phase=status.get("phase"),
        created_at=when(metadata.get("creationTimestamp")),
        started_at=when(status.get("startedAt")),
        finished_at=when(status.get("finishedAt")),
    )


class MirrorWriter:
    def __init__(self, store: Store, kube: Kube) -> None:
        self.store = store
        self.kube = kube
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._runs: dict[RunKey, dict[str, Any]] = {}
        self._versions: list[SpecVersion | Deletion] = []
        self._recorded: dict[tuple[str, str, str], str | None] = {}
        self._thread = threading.Thread(target=self._loop, name="mirror", daemon=True)
        self._acks = ThreadPoolExecutor(ACK_THREADS, thread_name_prefix="mirror-ack")

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout=10)
        self._acks.shutdown(wait=False, cancel_futures=True)

    # --- called from the event loop: must stay cheap ---

    def offer_run(self, body: Mapping[str, Any]) -> None:
        """The latest body of a Run whose outbox has entries, or whose phase changed."""
        run = mirrored_part(body)
        key = (run["metadata"]["namespace"], run["metadata"]["name"])
        with self._lock:
            self._runs[key] = run
        self._wake.set()

    def offer_version(self, version: SpecVersion | Deletion) -> None:
        key = (version.kind, version.namespace, version.name)
        known = version.spec_hash if isinstance(version, SpecVersion) else None
        with self._lock:
            if known is not None and self._recorded.get(key) == known:
                return  # a status update: the spec this version has was recorded already
            self._recorded[key] = known
            self._versions.append(version)
        self._wake.set()

    # --- the thread ---

    def _loop(self) -> None:
        failures = 0
        while not self._stop.is_set():
            self._wake.wait(timeout=1.0)
            self._wake.clear()
            self._report_lag()
            try:
                self._flush()
                failures = 0
            except Exception as error:  # Postgres down or slow: keep everything, try later
                failures += 1
                delay = min(MAX_BACKOFF, 0.5 * 2**failures)
                metrics.MIRROR_ERRORS.inc()
                log.warning("mirror write failed, retrying in %.1f s: %s", delay, error)
                self._stop.wait(delay)

    def _flush(self) -> None:
        with self._lock:
            versions, self._versions = self._versions, []
            runs = dict(list(self._runs.items())[:BATCH_RUNS])
        try:
            for version in versions:
                if isinstance(version, Deletion):
                    self.store.record_deletion(
                        version.kind, version.namespace, version.name, version.uid,
                        version.at, version.actor,
                    )  # fmt: skip
                else:
                    self.store.record_version(version)
        except Exception:
            with self._lock:
                self._versions[:0] = versions
            raise
        if not runs:
            return
        started = time.monotonic()
        try:
            events = self._write(list(runs.values()))
        except ChainGapError:
            # Cannot happen while the outbox works as designed; if it does, keep that Run's
            # entries in its status (nothing is lost) and let the other Runs through.
            events = []
            for key, body in list(runs.items()):
                try:
                    events += self._write([body])
                except ChainGapError as error:
                    log.error("cannot mirror Run %s/%s: %s", *key, error)
                    metrics.MIRROR_ERRORS.inc()
                    del runs[key]
                    with self._lock:
                        self._runs.pop(key, None)
        metrics.MIRROR_WRITE_SECONDS.observe(time.monotonic() - started)
        metrics.MIRROR_EVENTS.inc(len(events))
        now = datetime.now(UTC)
        for event in events:
            metrics.MIRROR_LAG_SECONDS.observe(max(0.0, (now - event.at).total_seconds()))
        with self._lock:
            for key, body in runs.items():
                if self._runs.get(key) is body:  # a newer body would still need writing
                    del self._runs[key]

        def acknowledge(item: tuple[RunKey, dict[str, Any]]) -> None:
            key, body = item
            pending = ((body.get("status") or {}).get("audit") or {}).get("pending") or []
            if pending:
                self._acknowledge(key, body, {outbox.entry_key(entry) for entry in pending})

        list(self._acks.map(acknowledge, runs.items()))

    def _write(self, bodies: list[dict[str, Any]]) -> list[AuditEvent]:
        """Every pending entry of these Runs, and their current state, in one transaction."""
        events: list[AuditEvent] = []
        usage: list[UsageRecord] = []
        for body in bodies:
            pending = ((body.get("status") or {}).get("audit") or {}).get("pending") or []
            run_events, run_usage = outbox.to_records(body, pending)
            events += run_events
            usage += run_usage
        self.store.write(events, usage, [run_record(body) for body in bodies])
        return events

    def _acknowledge(
        self, key: RunKey, body: dict[str, Any] | None, stored: set[tuple[Any, ...]]
    ) -> None:
        """Removes the stored entries from the Run's outbox, keeping any added since. Tries the
        body it wrote from first; only a conflict (the Run changed meanwhile) costs a GET."""
        refetched = False
        for _ in range(5):
            if body is None:
                return
            audit = (body.get("status") or {}).get("audit") or {}
            remaining = outbox.acknowledge(audit.get("pending") or [], stored)
            if len(remaining) == len(audit.get("pending") or []):
                return
            try:
                written = self.kube.patch_status(
                    "runs", *key,
                    {"audit": {**audit, "pending": remaining or None}},
                    body["metadata"]["resourceVersion"],
                )  # fmt: skip
                if written is not None and not refetched:
                    # Nothing the reconciler reads changed: its watch event needs no reconcile.
                    # Not after a GET: Kopf may fold the event of a change the reconciler has
                    # not seen yet into the event of this write.
                    self.kube.own_writes.add("runs", written)
                return
            except Conflict:
                body, refetched = self.kube.get("runs", *key), True

    def _report_lag(self) -> None:
        """Age of the oldest event not yet in Postgres: the mirror's lag."""
        with self._lock:
            bodies = list(self._runs.values())
        oldest = None
        for body in bodies:
            for entry in ((body.get("status") or {}).get("audit") or {}).get("pending") or []:
                if entry.get("type") == outbox.EVENT:
                    at = datetime.fromisoformat(entry["at"])
                    oldest = at if oldest is None or at < oldest else oldest
        lag = (datetime.now(UTC) - oldest).total_seconds() if oldest else 0.0
        metrics.MIRROR_PENDING_AGE.set(max(0.0, lag))


def last_manager(body: dict[str, Any]) -> str | None:
    """Who last wrote the object, as far as the API server knows (field managers)."""
    fields = body["metadata"].get("managedFields") or []
    writes = [
        f for f in fields if f.get("operation") in ("Apply", "Update") and not f.get("subresource")
    ]
    latest = max(writes, key=lambda f: f.get("time") or "", default=None)
    return latest.get("manager") if latest else None


def offer_registry_event(
    writer: MirrorWriter | None,
    kind: str,
    event_type: str | None,
    body: dict[str, Any],
    spec_hash: str | None,
) -> None:
    """An Agent or Template was created, changed or deleted: its spec version, or the deletion."""
    if writer is None:
        return
    metadata = body["metadata"]
    now = datetime.now(UTC)
    if event_type == "DELETED":
        writer.offer_version(
            Deletion(
                kind,
                metadata["namespace"],
                metadata["name"],
                metadata["uid"],
                now,
                last_manager(body),
            )
        )
    elif spec_hash is not None:
        writer.offer_version(
            SpecVersion(
                kind=kind,
                namespace=metadata["namespace"],
                name=metadata["name"],
                uid=metadata["uid"],
                spec=dict(body.get("spec") or {}),
                spec_hash=spec_hash,
                at=now,
                actor=last_manager(body),
            )
        )
