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
from pathlib import Path
from typing import Any, ClassVar

import pytest
import urllib3
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from nofx import apiserver
from nofx.apiserver import ApiServer
from nofx.reconcilers.errors import is_transient


class Recorded(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # a watch's answer comes in chunks
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
                "user_agent": self.headers.get("User-Agent"),
                "body": body,
            }
        )
        if self.path.endswith("/slow"):
            time.sleep(1)
            with contextlib.suppress(OSError):  # the client gave up and closed the connection
                self._send(200, "{}")
        elif "watch=true" in self.path:
            lines = [{"type": "ADDED", "object": {"n": 1}}, {"type": "DELETED", "object": {"n": 2}}]
            self._send_chunked("\n".join(json.dumps(line) for line in lines) + "\n", size=7)
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

    def _send_chunked(self, text: str, size: int) -> None:
        """In chunks of `size` bytes: lines end in the middle of chunks, and span several."""
        data = text.encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        for start in range(0, len(data), size):
            piece = data[start : start + size]
            self.wfile.write(f"{len(piece):x}\r\n".encode() + piece + b"\r\n")
        self.wfile.write(b"0\r\n\r\n")

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
    api = client.ApiClient(configuration)
    api.user_agent = "nofx-test/1"
    yield ApiServer(api)
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
    assert seen["user_agent"] == "nofx-test/1"


def test_a_component_names_itself_to_the_api_server(tmp_path: Path) -> None:
    kubeconfig = tmp_path / "config"
    kubeconfig.write_text(
        json.dumps(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "c", "cluster": {"server": "https://127.0.0.1:6443"}}],
                "users": [{"name": "u", "user": {"token": "t"}}],
                "contexts": [{"name": "x", "context": {"cluster": "c", "user": "u"}}],
                "current-context": "x",
            }
        )
    )
    api = apiserver.load_config("nofx-cli", str(kubeconfig))
    assert api.user_agent.startswith("nofx-cli/")  # managedFields' manager: nofx-cli


def test_an_error_status_is_an_api_exception_with_the_servers_words(server: ApiServer) -> None:
    with pytest.raises(ApiException) as raised:
        server.request("GET", "/api/v1/namespaces/a/pods/missing")
    assert raised.value.status == 404 and "not there" in (raised.value.body or "")
    assert server.request("GET", "/api/v1/namespaces") == {"echo": None}, "the pool still works"


def test_an_answer_nobody_reads_is_read_off_the_connection_but_not_decoded(
    server: ApiServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    decoded: list[bytes] = []
    monkeypatch.setattr(apiserver, "decode", lambda data: decoded.append(data) or {})
    created = server.request("POST", "/apis/batch/v1/namespaces/a/jobs", {"a": 1}, answer=False)
    assert created is None
    assert decoded == []
    monkeypatch.undo()
    assert server.request("GET", "/api/v1/namespaces") == {"echo": None}, "the pool still works"


def test_a_watch_yields_its_lines_whole_across_chunks(server: ApiServer) -> None:
    with server.stream("/api/v1/pods", {"watch": "true"}, read_timeout=5) as lines:
        events = [apiserver.decode(line) for line in lines if line]
    assert events == [
        {"type": "ADDED", "object": {"n": 1}},
        {"type": "DELETED", "object": {"n": 2}},
    ]
    assert server.request("GET", "/api/v1/namespaces") == {"echo": None}, "the pool still works"


def test_json_orjson_refuses_is_read_and_written_as_before() -> None:
    assert apiserver.decode(b'{"a": "\\ud800", "b": 1e400}') == {"a": "\ud800", "b": float("inf")}
    assert apiserver.decode(b'{"a": [1, "x\xff"]}') == {"a": [1, "x\ufffd"]}
    assert json.loads(apiserver.encode({1: 2**70})) == {"1": 2**70}
    assert apiserver.encode({"a": [1, None]}) == b'{"a":[1,null]}'


def test_a_request_the_server_does_not_answer_fails_in_bounded_time(
    server: ApiServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(apiserver, "REQUEST_TIMEOUT", (1.0, 0.1))
    started = time.monotonic()
    with pytest.raises(urllib3.exceptions.HTTPError):
        server.request("GET", "/api/v1/namespaces/a/pods/slow")
    assert is_transient(urllib3.exceptions.ReadTimeoutError(None, "/slow", "read timed out"))
    assert time.monotonic() - started < 3, "not held for as long as TCP allows"
