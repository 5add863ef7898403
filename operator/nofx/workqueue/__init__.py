"""A work queue for reconcilers, in the layers of client-go's workqueue: de-duplicating
(WorkQueue), delaying (Timers, on an injected Clock) and rate-limiting (Backoff), with the
worker loop of controller-runtime (worker, Result). No Kopf: asyncio and the standard library.

How the Run reconciler uses it, all of it on the event loop's thread:

- every trigger (a Run or Job event, a freed agent slot, a Template that appeared) is
  queue.add((namespace, name)), with no payload: the pass starts from the newest body the
  operator wrote or saw (OwnWrites), so thousands of waiting Runs hold no body each; a
  reconcile thread that finds it missed a wake-up calls loop.call_soon_threadsafe(queue.add,
  key);
- N worker tasks loop: get a key → observe the indexes, reconcile in a thread
  (asyncio.to_thread) → on a result: backoff.forget(key), timers.schedule(key,
  result.requeue_after); on an error: timers.schedule(key, backoff.when(key).delay), then
  on_error (log, show or fail the Run) → queue.done(key);
- a timer that falls due adds its key;
- a deleted Run: timers.cancel(key), backoff.forget(key);
- at shutdown: timers.close(), await queue.drain(drop_waiting=True), await the workers.
"""

from nofx.workqueue.backoff import Backoff, Retry
from nofx.workqueue.clock import Clock, LoopClock
from nofx.workqueue.delays import Timers, When
from nofx.workqueue.queue import ShutDown, WorkQueue
from nofx.workqueue.workers import Result, WorkerPool, handle, worker

__all__ = [
    "Backoff",
    "Clock",
    "LoopClock",
    "Result",
    "Retry",
    "ShutDown",
    "Timers",
    "When",
    "WorkQueue",
    "WorkerPool",
    "handle",
    "worker",
]
