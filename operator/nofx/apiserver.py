"""The API server as plain JSON: a client configured for a Pod or a kubeconfig, and every
request of the operator and the console, as one answer (request) or a stream of lines
(stream, for watches). The typed client's methods validate their arguments into its models
first (a pydantic model of a whole Job: 3-8 % of the operator's CPU under load) and build
models of the response, only to turn both back into plain data."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from importlib.metadata import version
from typing import Any
from urllib.parse import urlencode, urlsplit

import orjson
import urllib3
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException


def load_config(component: str, kubeconfig: str | None = None) -> client.ApiClient:
    """In a Pod: its service account; elsewhere: KUBECONFIG or ~/.kube/config. The component
    (nofx-operator, nofx-cli, nofx-console) names its requests in the API server's audit log
    and its fields' manager in managedFields (else "python-urllib3")."""
    configuration = client.Configuration()
    if kubeconfig is None and os.environ.get("KUBERNETES_SERVICE_HOST"):
        config.load_incluster_config(client_configuration=configuration)
    else:
        config.load_kube_config(config_file=kubeconfig, client_configuration=configuration)
    # Reconciles run in parallel threads; each needs a connection without waiting for another.
    configuration.connection_pool_maxsize = 32
    api = client.ApiClient(configuration)
    api.user_agent = f"{component}/{version('nofx')}"
    return api


# Seconds to connect, and to wait for each read of an answer: a hung API server fails the
# request (the reconcile is retried) instead of holding a thread for as long as TCP allows.
REQUEST_TIMEOUT = (10.0, 60.0)


class ApiServer:
    def __init__(self, api: client.ApiClient) -> None:
        self.api = api
        configuration = api.configuration
        self._host = configuration.host.rstrip("/")
        self._prefix = urlsplit(self._host).path  # an API server behind a proxy's path
        pools = api.rest_client.pool_manager
        # The API server's own connection pool, found once: the pool manager would parse each
        # URL again to find it (with the client's wrappers around it, a seventh of the
        # operator's CPU under load). Through a proxy, the manager must see whole URLs.
        self._pool = None if configuration.proxy else pools.connection_from_url(self._host)
        self._pools = pools

    def request(
        self,
        method: str,
        path: str,
        body: dict[str, Any] | None = None,
        *,
        query: dict[str, str] | None = None,
        content_type: str = "application/json",
        answer: bool = True,
    ) -> Any:
        """Plain data in and out, ApiException on an error status. With answer=False the
        answer is read but not decoded (None): a created Job comes back whole, and decoding
        what nobody reads cost as much as the rest of the request."""
        response = self._send(method, path, query, body, content_type)
        data = response.data
        response.release_conn()  # back to the pool: no new TLS handshake next time
        if not 200 <= response.status <= 299:
            raise ApiException.from_response(http_resp=response, body=None, data=None)
        return decode(data) if answer else None

    @contextmanager
    def stream(self, path: str, query: dict[str, str], read_timeout: float) -> Iterator[Any]:
        """The lines of a streaming GET (a watch), as they arrive, undecoded (see decode)."""
        response = self._send("GET", path, query, timeout=(10, read_timeout))
        read_to_end = False

        def lines() -> Iterator[bytes]:
            nonlocal read_to_end
            started: list[bytes] = []  # of a line not ended yet (a large object's chunks)
            for chunk in response.stream(amt=None, decode_content=False):
                if b"\n" not in chunk:
                    started.append(chunk)
                    continue
                first, *whole, last = chunk.split(b"\n")
                yield b"".join([*started, first])
                yield from whole
                started = [last]
            read_to_end = True

        try:
            if not 200 <= response.status <= 299:
                raise ApiException.from_response(http_resp=response, body=None, data=None)
            yield lines()
        finally:
            if read_to_end:
                response.release_conn()  # back to the pool for the next request
            else:
                response.close()  # unread data must not reach the next request on this connection

    def _send(
        self,
        method: str,
        path: str,
        query: dict[str, str] | None,
        body: dict[str, Any] | None = None,
        content_type: str = "application/json",
        timeout: tuple[float, float] | None = None,
    ) -> urllib3.BaseHTTPResponse:
        """The response, its body not read yet."""
        headers = {"Accept": "application/json", "User-Agent": self.api.user_agent}
        # The bearer token, refreshed when the client's configuration says it is due.
        self.api.update_params_for_auth(headers, None, ["BearerToken"], path, method, None)
        data = None
        if body is not None:
            headers["Content-Type"] = content_type
            data = encode(body)
        url = f"{self._prefix}{path}?{urlencode(query)}" if query else self._prefix + path
        connect, read = timeout or REQUEST_TIMEOUT
        limits = urllib3.Timeout(connect=connect, read=read)
        if self._pool is None:
            whole = urlsplit(self._host)._replace(path="", query="").geturl() + url
            return self._pools.urlopen(
                method, whole, body=data, headers=headers, timeout=limits,
                preload_content=False,
            )  # fmt: skip
        return self._pool.urlopen(
            method, url, body=data, headers=headers, timeout=limits, preload_content=False
        )


# JSON by orjson: three to four times as fast as the standard library's, and decoding watch
# events was about a tenth of the operator's CPU. What orjson refuses goes to the standard
# library, as before: a lone surrogate or a number beyond a double to decode (the API server
# sends neither), a key that is not a string or an integer beyond 64 bits to encode.


def decode(data: bytes | str) -> Any:
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        text = data if isinstance(data, str) else data.decode("utf-8", errors="replace")
        return json.loads(text)


def encode(body: Any) -> bytes:
    try:
        return orjson.dumps(body)
    except orjson.JSONEncodeError:
        return json.dumps(body).encode()
