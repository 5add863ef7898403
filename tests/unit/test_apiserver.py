"""The client seam against a small HTTP server of our own: the path (with the prefix of an API
server behind a proxy), the query, the bearer token, the JSON body, errors as ApiException,
and a watch's lines."""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, ClassVar

import pytest
import urllib3
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from nofx import apiserver
from nofx.apiserver import ApiServer
from nofx.reconcilers.errors import is_transient


class Recorded(BaseHTTPRequestHandler):
    seen: ClassVar[list[dict[str, Any]]] = []

    def _answer(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = json.loads(self.rfile.read(length)) if length else None
        Recorded.seen.append(
            {
                "method": self.command,
                "path": self.path,
                "authorization": self.headers.get("Authorization"),
                "content_type": self.headers.get("Content-Type"),
                "body": body,
            }
        )
        if self.path.endswith("/slow"):
            time.sleep(1)
            with contextlib.suppress(OSError):  # the client gave up and closed the connection
                self._send(200, "{}")
        elif "watch=true" in self.path:
            lines = [{"type": "ADDED", "object": {"n": 1}}, {"type": "DELETED", "object": {"n": 2}}]
            self._send(200, "\n".join(json.dumps(line) for line in lines) + "\n")
        elif self.path.endswith("/missing"):
            self._send(404, json.dumps({"kind": "Status", "message": "not there", "code": 404}))
        else:
            self._send(200, json.dumps({"echo": body}))

    def _send(self, status: int, text: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(text.encode())))
        self.end_headers()
        self.wfile.write(text.encode())

    do_GET = do_POST = do_PATCH = _answer

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def server() -> Iterator[ApiServer]:
    http = ThreadingHTTPServer(("127.0.0.1", 0), Recorded)
    threading.Thread(target=http.serve_forever, daemon=True).start()
    configuration = client.Configuration()
    configuration.host = f"http://127.0.0.1:{http.server_address[1]}/k8s/clusters/c1"
    configuration.api_key = {"authorization": "token-1"}
    configuration.api_key_prefix = {"authorization": "Bearer"}
    Recorded.seen = []
    yield ApiServer(client.ApiClient(configuration))
    http.shutdown()


def test_a_request_goes_to_the_prefixed_path_with_the_token_and_json(server: ApiServer) -> None:
    patch = {"status": {"phase": "Running"}}
    answer = server.request(
        "PATCH",
        "/apis/nofx.dev/v1alpha1/namespaces/a/runs/r/status",
        patch,
        query={"labelSelector": "nofx.dev/run,x=y"},
        content_type="application/merge-patch+json",
    )
    assert answer == {"echo": patch}
    [seen] = Recorded.seen
    assert seen["path"] == (
        "/k8s/clusters/c1/apis/nofx.dev/v1alpha1/namespaces/a/runs/r/status"
        "?labelSelector=nofx.dev%2Frun%2Cx%3Dy"
    )
    assert seen["authorization"] == "Bearer token-1"
    assert seen["content_type"] == "application/merge-patch+json"


def test_an_error_status_is_an_api_exception_with_the_servers_words(server: ApiServer) -> None:
    with pytest.raises(ApiException) as raised:
        server.request("GET", "/api/v1/namespaces/a/pods/missing")
    assert raised.value.status == 404 and "not there" in (raised.value.body or "")
    assert server.request("GET", "/api/v1/namespaces") == {"echo": None}, "the pool still works"


def test_a_watch_yields_its_lines(server: ApiServer) -> None:
    with server.stream("/api/v1/pods", {"watch": "true"}, read_timeout=5) as lines:
        events = [json.loads(line) for line in lines if line]
    assert [event["type"] for event in events] == ["ADDED", "DELETED"]


def test_a_request_the_server_does_not_answer_fails_in_bounded_time(
    server: ApiServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(apiserver, "REQUEST_TIMEOUT", (1.0, 0.1))
    started = time.monotonic()
    with pytest.raises(urllib3.exceptions.HTTPError):
        server.request("GET", "/api/v1/namespaces/a/pods/slow")
    assert is_transient(urllib3.exceptions.ReadTimeoutError(None, "/slow", "read timed out"))
    assert time.monotonic() - started < 3, "not held for as long as TCP allows"
