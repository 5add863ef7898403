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
from typing import Any

from kubernetes import client, config
from kubernetes.client.exceptions import ApiException
from kubernetes.watch.watch import iter_resp_lines


def load_config(kubeconfig: str | None = None) -> client.ApiClient:
    """In a Pod: its service account; elsewhere: KUBECONFIG or ~/.kube/config."""
    configuration = client.Configuration()
    if kubeconfig is None and os.environ.get("KUBERNETES_SERVICE_HOST"):
        config.load_incluster_config(client_configuration=configuration)
    else:
        config.load_kube_config(config_file=kubeconfig, client_configuration=configuration)
    # Reconciles run in parallel threads; each needs a connection without waiting for another.
    configuration.connection_pool_maxsize = 32
    return client.ApiClient(configuration)


class ApiServer:
    def __init__(self, api: client.ApiClient) -> None:
        self.api = api

    def request(
        self,
        method: str,
        path: str,
        body: dict[str, Any] | None = None,
        *,
        query: dict[str, str] | None = None,
        content_type: str = "application/json",
    ) -> Any:
        """Plain data in and out, ApiException on an error status."""
        response = self._send(method, path, query, body, content_type)
        data = response.read()
        response.response.release_conn()  # back to the pool: no new TLS handshake next time
        if not 200 <= response.status <= 299:
            raise ApiException.from_response(http_resp=response, body=None, data=None)
        return json.loads(data)

    @contextmanager
    def stream(self, path: str, query: dict[str, str], read_timeout: float) -> Iterator[Any]:
        """The lines of a streaming GET (a watch), as they arrive."""
        response = self._send("GET", path, query, timeout=(10, read_timeout))
        raw, read_to_end = response.response, False

        def lines() -> Iterator[str]:
            nonlocal read_to_end
            yield from iter_resp_lines(raw)
            read_to_end = True

        try:
            if not 200 <= response.status <= 299:
                response.read()
                raise ApiException.from_response(http_resp=response, body=None, data=None)
            yield lines()
        finally:
            if read_to_end:
                raw.release_conn()  # back to the pool for the next request
            else:
                raw.close()  # unread data must not reach the next request on this connection

    def _send(
        self,
        method: str,
        path: str,
        query: dict[str, str] | None,
        body: dict[str, Any] | None = None,
        content_type: str = "application/json",
        timeout: tuple[float, float] | None = None,
    ) -> Any:
        """The response, its body not read yet."""
        headers = {"Accept": "application/json"}
        if body is not None:
            headers["Content-Type"] = content_type
        request = self.api.param_serialize(
            method=method,
            resource_path=path,
            query_params=list((query or {}).items()),
            header_params=headers,
            body=body,
            auth_settings=["BearerToken"],
        )
        return self.api.call_api(*request, _request_timeout=timeout)
