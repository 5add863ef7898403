"""Cache lookups of cached steps, off the reconcile path: a pass that needs an answer asks (a
dict insert and a queue put), a thread of its own queries the mirror's Postgres and triggers
the Run again with the answer, which the next pass hands to the planner (World.cache_answers).

A failed lookup (Postgres away) answers as a miss: the step runs its Job, as it would without a
cache entry, rather than wait for the database. Answers are kept only while a pass still asks
for them, so a stale miss is never read by a later step or Run.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable, Iterable

from nofx.mirror.store import Store
from nofx.planner.facts import CacheHit, CacheQuery

log = logging.getLogger("nofx.cache")

RunKey = tuple[str, str]  # (namespace, name)


class StepCache:
    def __init__(self, store: Store) -> None:
        self.store = store
        # Reconciles a Run again once an answer is known; set by the Run reconciler, and safe
        # to call from this thread.
        self.on_answer: Callable[[RunKey], None] = lambda run: None
        self._lock = threading.Lock()
        self._asked: set[tuple[RunKey, str]] = set()  # in the queue or being looked up
        self._answers: dict[RunKey, dict[str, CacheHit | None]] = {}
        self._queue: queue.Queue[tuple[RunKey, CacheQuery] | None] = queue.Queue()
        self._thread = threading.Thread(target=self._loop, name="step-cache", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._queue.put(None)
        self._thread.join(timeout=10)

    # --- called by reconcile passes: memory only ---

    def answers(self, run: RunKey) -> dict[str, CacheHit | None]:
        with self._lock:
            return dict(self._answers.get(run, {}))

    def ask(self, run: RunKey, queries: Iterable[CacheQuery]) -> None:
        """Looks up what the pass asked for and not yet answered; forgets the answers it no
        longer needs (the steps that read them moved on)."""
        wanted = {query.key: query for query in queries}
        with self._lock:
            known = self._answers.get(run, {})
            kept = {key: answer for key, answer in known.items() if key in wanted}
            if kept:
                self._answers[run] = kept
            else:
                self._answers.pop(run, None)
            new = [
                query
                for key, query in wanted.items()
                if key not in kept and (run, key) not in self._asked
            ]
            self._asked.update((run, query.key) for query in new)
        for query in new:
            self._queue.put((run, query))

    def forget(self, run: RunKey) -> None:
        with self._lock:
            self._answers.pop(run, None)

    # --- the thread ---

    def _loop(self) -> None:
        while (item := self._queue.get()) is not None:
            run, query = item
            answer: CacheHit | None = None
            try:
                found = self.store.cache_lookup(
                    query.key, query.namespace, query.account, query.since
                )
                if found is not None:
                    answer = CacheHit(*found)
            except Exception:
                log.exception("cache lookup failed: the step runs uncached", extra={"run": run[1]})
            with self._lock:
                self._asked.discard((run, query.key))
                self._answers.setdefault(run, {})[query.key] = answer
            self.on_answer(run)
