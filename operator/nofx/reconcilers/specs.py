"""Agents or Templates as a watch of our own sees them: each one's spec by namespace, validated
once per change (None: it does not validate, and its handler says why in its status), and a
call to that handler for each change.

The handlers run one at a time and in order, on a thread of their own; a change whose handler
failed is handled again after a doubling delay unless a newer one came; and only once every
watch they read has listed (ready): an Agent's handler reads the Templates, and a Template's
the Agents, as Kopf held its handlers until all its indexes were full."""

from __future__ import annotations

import logging
import threading
from collections import defaultdict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Generic, TypeVar

from pydantic import BaseModel, ValidationError

from nofx.api.common import GROUP, VERSION
from nofx.apiserver import ApiServer
from nofx.watching import Key, Watch, Watching, retry_delay

log = logging.getLogger("nofx.specs")

SpecT = TypeVar("SpecT", bound=BaseModel)
# The handler: ADDED (also for each object of a first list), MODIFIED or DELETED, and the body.
Changed = Callable[[str, dict[str, Any]], None]


class Specs(Watching, Generic[SpecT]):
    def __init__(
        self,
        model: type[SpecT],
        plural: str,
        server: ApiServer | None = None,
        namespaces: tuple[str, ...] = (),
    ) -> None:
        self.model, self.plural = model, plural
        self.on_change: Changed | None = None
        self.ready: Callable[[], bool] = lambda: True  # what the handler reads is whole
        self._stopped = threading.Event()
        self._lock = threading.Lock()
        self._bodies: dict[Key, dict[str, Any]] = {}  # a deletion's handler reads it
        self._specs: dict[str, dict[str, SpecT | None]] = defaultdict(dict)
        self._handler = ThreadPoolExecutor(1, thread_name_prefix=plural)
        # server None: nothing is watched (tests fill it through listed and changed).
        self.watches = (
            [Watch(server, _path(plural, ns), {}, self, plural, ns) for ns in namespaces or ("",)]
            if server is not None
            else []
        )

    def stop(self) -> None:
        super().stop()
        self._stopped.set()
        self._handler.shutdown(wait=False, cancel_futures=True)

    # --- what the reconcilers read ---

    def of(self, namespace: str) -> dict[str, SpecT | None]:
        """By name, every one the namespace holds; None: its spec does not validate."""
        with self._lock:
            return dict(self._specs.get(namespace, {}))

    def valid(self, namespace: str) -> dict[str, SpecT]:
        return {name: spec for name, spec in self.of(namespace).items() if spec is not None}

    # --- what the watch tells ---

    def held_versions(self, scope: str) -> dict[Key, str]:
        with self._lock:
            return {k: _version(b) for k, b in self._bodies.items() if scope in ("", k[0])}

    def last_body(self, key: Key) -> dict[str, Any]:
        with self._lock:
            return self._bodies[key]  # a deletion's handler reads its uid

    def changed(self, scope: str, kind: str, body: dict[str, Any]) -> None:
        namespace, name = body["metadata"]["namespace"], body["metadata"]["name"]
        with self._lock:
            if kind == "DELETED":
                self._bodies.pop((namespace, name), None)
                in_namespace = self._specs.get(namespace, {})
                in_namespace.pop(name, None)
                if not in_namespace:
                    self._specs.pop(namespace, None)
            else:
                self._bodies[(namespace, name)] = body
                self._specs[namespace][name] = self._validated(body)
        if self.handling:
            self.tell(kind, body)

    def tell(self, kind: str, body: dict[str, Any]) -> None:
        if self.on_change is not None:
            self._handler.submit(self._handle, kind, body)

    def _validated(self, body: dict[str, Any]) -> SpecT | None:
        try:
            return self.model.model_validate(body.get("spec") or {})
        except ValidationError:
            return None

    def _handle(self, kind: str, body: dict[str, Any], failures: int = 0) -> None:
        while not self.ready():
            if self._stopped.wait(0.1):
                return
        if failures and not self._is_current(kind, body):
            return  # a newer change came meanwhile, and is handled in its turn
        try:
            if self.on_change is not None:
                self.on_change(kind, body)
        except Exception as error:  # the next change is handled all the same
            failures += 1
            delay = retry_delay(failures)
            metadata = body["metadata"]
            log.warning(
                "handling a change of %s %s/%s failed; retrying in %.0f s: %s",
                self.plural, metadata["namespace"], metadata["name"], delay, error,
                extra={"failures": failures},
            )  # fmt: skip
            retry = threading.Timer(delay, self._retry, (kind, body, failures))
            retry.daemon = True
            retry.start()

    def _retry(self, kind: str, body: dict[str, Any], failures: int) -> None:
        if not self._stopped.is_set():
            self._handler.submit(self._handle, kind, body, failures)

    def _is_current(self, kind: str, body: dict[str, Any]) -> bool:
        """No newer change of the object came. By version, not identity: a change told from a
        standby's takeover list is a body of its own."""
        key = (body["metadata"]["namespace"], body["metadata"]["name"])
        with self._lock:
            held = self._bodies.get(key)
        if kind == "DELETED":
            return held is None
        return held is not None and _version(held) == _version(body)


def _version(body: dict[str, Any]) -> str:
    return str(body["metadata"].get("resourceVersion", ""))


def _path(plural: str, namespace: str) -> str:
    base = f"/apis/{GROUP}/{VERSION}"
    return f"{base}/namespaces/{namespace}/{plural}" if namespace else f"{base}/{plural}"
