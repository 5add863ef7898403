"""The mirror's writer: a background thread that moves outbox entries from Runs' status into
Postgres in batches, records Agent and Template versions, and never blocks reconciling.

Run events hand it the latest body of each Run (cheap: a dict assignment); the thread writes
every queued Run's pending entries in one transaction, then removes exactly those entries from
each Run's status. If Postgres is down it keeps retrying with backoff; the entries stay in the
Runs' status meanwhile, so a restarted operator finds them again.

One object whose rows Postgres refuses (errors.Rejected) never holds back the others: its batch
is written again Run by Run (batches.py), and the refused object is held back, retried alone
with backoff, and reported where people look (a Warning Event and a Mirrored condition on it).
A Run whose acknowledgement (acknowledgement.py) failed is offered again by the writer itself.
With audit keys, it also signs the heads of changed Agent and Template streams every minute.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any

from nofx import metrics
from nofx.kube import Kube
from nofx.mirror import report
from nofx.mirror.acknowledgement import acknowledge
from nofx.mirror.batches import write_isolated
from nofx.mirror.errors import Rejected
from nofx.mirror.folding import StoredEntries
from nofx.mirror.records import Deletion, SpecVersion
from nofx.mirror.retries import Retries
from nofx.mirror.run_body import RunKey, entry_time, mirrored_part, pending, run_target
from nofx.mirror.store import Store

log = logging.getLogger("nofx.mirror")

ObjectKey = tuple[str, str, str]  # kind, namespace, name
BATCH_RUNS = 200  # Runs per transaction
ACK_THREADS = 8  # acknowledgements in flight at once: each is one API round trip
MAX_BACKOFF = 30.0
# Once woken, the writer waits this long before writing, so that one transaction carries the
# Runs that changed together (dozens under load) instead of one each: a little lag for far
# fewer round trips to Postgres.
GATHER_SECONDS = 0.05
RETRY_FIRST = 1.0  # seconds before a refused Run or object, or an acknowledgement, is retried
# Seconds between checkpoints of the Agent and Template streams that changed: how long a
# deleted newest registry row can go unnoticed (a Run's head is signed when the Run ends).
CHECKPOINT_EVERY = 60.0


class MirrorWriter:
    def __init__(
        self, store: Store, kube: Kube, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.store = store
        self.kube = kube
        self._clock = clock
        self._next_checkpoint = clock() + CHECKPOINT_EVERY
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._runs: dict[RunKey, dict[str, Any]] = {}  # to write with the next batch
        self._refused_runs: Retries[RunKey, dict[str, Any]] = Retries(
            RETRY_FIRST, MAX_BACKOFF, clock
        )
        self._unacknowledged: Retries[RunKey, dict[str, Any]] = Retries(
            RETRY_FIRST, MAX_BACKOFF, clock
        )
        self.stored = StoredEntries(clock)  # in Postgres, still in their Run's outbox
        self._versions: list[SpecVersion | Deletion] = []
        self._refused_objects: Retries[ObjectKey, None] = Retries(RETRY_FIRST, MAX_BACKOFF, clock)
        self._recorded: dict[ObjectKey, str | None] = {}
        # Objects reported refused: the problem reported ("" if an earlier process reported it).
        self._reported: dict[ObjectKey, str] = {}
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
            if report.was_rejected(body):
                self._reported.setdefault(("Run", *key), "")
            if not self._refused_runs.update(key, run):
                self._runs[key] = run
                self._unacknowledged.release(key)  # this body is written and acknowledged
        self._wake.set()

    def offer_version(self, version: SpecVersion | Deletion, was_rejected: bool = False) -> None:
        key = (version.kind, version.namespace, version.name)
        known = version.spec_hash if isinstance(version, SpecVersion) else None
        with self._lock:
            if was_rejected:
                self._reported.setdefault(key, "")
            if known is not None and self._recorded.get(key) == known:
                return  # a status update: the spec this version has was recorded already
            self._recorded[key] = known
            self._versions.append(version)
        self._wake.set()

    # --- the thread ---

    def _loop(self) -> None:
        failures = 0
        while not self._stop.is_set():
            if self._wake.wait(timeout=1.0):
                self._stop.wait(GATHER_SECONDS)
            self._wake.clear()
            try:
                self._report_lag()
                self._flush()
                failures = 0
            except Exception as error:  # Postgres down or slow: keep everything, try later
                failures += 1
                delay = min(MAX_BACKOFF, 0.5 * 2**failures)
                metrics.MIRROR_ERRORS.inc()
                log.warning("mirror write failed, retrying in %.1f s: %s", delay, error)
                self._stop.wait(delay)

    def _flush(self) -> None:
        self._write_versions()
        self._retry_refused_runs()
        self._write_runs()
        self._checkpoint_registry()  # last: never delays what is still to be written

    def _checkpoint_registry(self) -> None:
        if self._clock() < self._next_checkpoint:
            return
        self._next_checkpoint = self._clock() + CHECKPOINT_EVERY  # a failure waits its turn too
        self.store.checkpoint_registry()

    def _write_versions(self) -> None:
        """In order; a refused object's later versions wait behind it, the others go on."""
        with self._lock:
            remaining, self._versions = self._versions, []
            due = {key for key, _ in self._refused_objects.due()}
            waiting = set(self._refused_objects.keys()) - due
        kept: list[SpecVersion | Deletion] = []
        try:
            while remaining:
                version = remaining[0]
                target = report.Target(version.kind, version.namespace, version.name, version.uid)
                if target.key in waiting:
                    kept.append(remaining.pop(0))
                    continue
                try:
                    self._record(version)
                except Rejected as error:
                    waiting.add(target.key)
                    kept.append(remaining.pop(0))
                    with self._lock:
                        failures = self._refused_objects.schedule(target.key, None)
                    self._report_refused(target, str(error), failures)
                    continue
                remaining.pop(0)
                with self._lock:
                    self._refused_objects.release(target.key)
                self._report_mirrored(target)
        finally:
            with self._lock:
                self._versions[:0] = kept + remaining

    def _record(self, version: SpecVersion | Deletion) -> None:
        if isinstance(version, Deletion):
            self.store.record_deletion(
                version.kind, version.namespace, version.name, version.uid, version.at,
                version.actor,
            )  # fmt: skip
        else:
            self.store.record_version(version)

    def _write_runs(self) -> None:
        with self._lock:
            for key, body in self._unacknowledged.due():
                self._runs.setdefault(key, body)  # written again (a no-op) and acknowledged
            batch = dict(list(self._runs.items())[:BATCH_RUNS])
        self._acknowledge_due()
        if not batch:
            return
        started = time.monotonic()
        unstored = {key: self.stored.unstored(key, body) for key, body in batch.items()}
        written, refused = write_isolated(self.store, unstored)
        metrics.MIRROR_WRITE_SECONDS.observe(time.monotonic() - started)
        with self._lock:
            for key, body in batch.items():
                if self._runs.get(key) is body:  # a newer body would still need writing
                    del self._runs[key]
        for key, problem in refused.items():
            with self._lock:
                body = self._runs.pop(key, batch[key])
                failures = self._refused_runs.schedule(key, body)
            self._report_refused(run_target(body), problem, failures)
        self._acknowledge_all({key: batch[key] for key in written})  # whole outboxes

    def _retry_refused_runs(self) -> None:
        """Each alone, as it is now: its entries may have changed or gone meanwhile."""
        with self._lock:
            due = self._refused_runs.due()
        for key, held in due:
            try:
                body = self.kube.get("runs", *key)
            except Exception as error:
                log.warning("cannot read Run %s/%s: %s", *key, error)
                with self._lock:
                    self._refused_runs.schedule(key, held)
                continue
            if body is None or not pending(body):  # gone, or its entries removed by hand
                with self._lock:
                    self._refused_runs.release(key)
                if body is not None:
                    self._report_mirrored(run_target(body))
                continue
            run = mirrored_part(body)
            written, refused = write_isolated(self.store, {key: run})
            with self._lock:
                if refused:
                    failures = self._refused_runs.schedule(key, run)
                else:
                    self._refused_runs.release(key)
            if refused:
                self._report_refused(run_target(run), refused[key], failures)
            self._acknowledge_all(written)

    def _acknowledge_all(self, written: dict[RunKey, dict[str, Any]]) -> None:
        """Written Runs: acknowledged now if they must be (folding.py), else left for the
        reconciler's next status write to drop."""
        now = []
        for key, body in written.items():
            keys = self.stored.written(key, body)
            if keys is None:
                with self._lock:
                    self._unacknowledged.release(key)
                self._report_mirrored(run_target(body))
            else:
                now.append((key, body, keys))
        self._acknowledge(now)

    def _acknowledge_due(self) -> None:
        self._acknowledge(self.stored.due())

    def _acknowledge(self, runs: list[tuple[RunKey, dict[str, Any], set[Any]]]) -> None:
        done = list(self._acks.map(lambda run: acknowledge(self.kube, *run), runs))
        for (key, body, keys), acknowledged in zip(runs, done, strict=True):
            with self._lock:
                if acknowledged:
                    self._unacknowledged.release(key)
                elif key not in self._runs:  # else the newer body is acknowledged in turn
                    self._unacknowledged.schedule(key, body)
            if acknowledged:
                self.stored.removed(key, body["metadata"]["uid"], keys)
                self._report_mirrored(run_target(body))

    # --- telling people ---

    def _report_refused(self, target: report.Target, problem: str, failures: int) -> None:
        """An object held back: counted once, reported once per distinct problem."""
        if failures == 1:
            metrics.MIRROR_REJECTED.labels(target.kind).inc()
        log.warning(
            "Postgres refused %s %s/%s, held back (failure %d): %s",
            target.kind, target.namespace, target.name, failures, problem,
            extra={"kind": target.kind, "namespace": target.namespace, "object": target.name},
        )  # fmt: skip
        with self._lock:
            if self._reported.get(target.key) == problem:
                return
        try:
            report.rejected(self.kube, target, problem)
        except Exception as error:  # reported again with the next failure
            log.warning("cannot report the refusal of %s/%s: %s", target.kind, target.name, error)
            return
        with self._lock:
            self._reported[target.key] = problem

    def _report_mirrored(self, target: report.Target) -> None:
        """Once a reported object's entries are in Postgres, its condition says so."""
        with self._lock:
            reported = self._reported.pop(target.key, None)
        if reported is None:
            return
        try:
            report.mirrored(self.kube, target)
        except Exception as error:  # tried again the next time the object is written
            log.warning("cannot set %s/%s Mirrored: %s", target.kind, target.name, error)
            with self._lock:
                self._reported.setdefault(target.key, reported)

    def _report_lag(self) -> None:
        """Age of the oldest entry not yet in Postgres (queued or held back), or whose removal
        from its Run's outbox failed: the mirror's lag. Entries stored and left for the
        reconciler's next write to drop are not late."""
        with self._lock:
            queued = [*self._runs.values(), *self._refused_runs.items()]
            unacknowledged = self._unacknowledged.items()
            times = [version.at for version in self._versions]
        entries = [e for body in queued for e in pending(self.stored.unstored(_key(body), body))]
        entries += [entry for body in unacknowledged for entry in pending(body)]
        times += [at for entry in entries if (at := entry_time(entry))]
        oldest = min(times, default=None)
        lag = (datetime.now(UTC) - oldest).total_seconds() if oldest else 0.0
        metrics.MIRROR_PENDING_AGE.set(max(0.0, lag))


def _key(body: dict[str, Any]) -> RunKey:
    return body["metadata"]["namespace"], body["metadata"]["name"]
