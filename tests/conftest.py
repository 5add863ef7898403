"""Fixtures: one real control plane and one real Postgres per test session (started only when an
end-to-end test asks for them), and a fresh namespace per test."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from kubernetes import client, config

from nofx_dev.controlplane import ControlPlane
from nofx_dev.postgres import PostgresServer
from nofx_dev.tools import tool_path


class Kubectl:
    """The pinned kubectl against one control plane; returns stdout, raises with stderr."""

    def __init__(self, kubeconfig: Path) -> None:
        self.kubeconfig = kubeconfig

    def run(
        self, *args: str, input: str | None = None, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [str(tool_path("kubectl")), "--kubeconfig", str(self.kubeconfig), *args],
            input=input,
            capture_output=True,
            text=True,
            timeout=120,
        )
        if check and result.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)} failed: {result.stderr.strip()}")
        return result

    def __call__(self, *args: str, input: str | None = None) -> str:
        return self.run(*args, input=input).stdout

    def json(self, *args: str) -> dict:
        return json.loads(self(*args, "-o", "json"))


@pytest.fixture(scope="session")
def control_plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlane]:
    plane = ControlPlane(tmp_path_factory.mktemp("control-plane"))
    plane.start()
    print(f"\ncontrol plane ready in {plane.startup_seconds:.1f} s ({plane.state_dir})")
    try:
        yield plane
    finally:
        plane.stop()


def new_postgres(**settings: str) -> PostgresServer:
    # Under /tmp rather than pytest's private temp dir: the server runs as another user.
    return PostgresServer(Path(tempfile.mkdtemp(prefix="nofx-pg-")) / "server", settings=settings)


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    server = new_postgres()
    server.start()
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(server.directory.parent, ignore_errors=True)


@pytest.fixture(scope="session")
def kubectl(control_plane: ControlPlane) -> Kubectl:
    return Kubectl(control_plane.kubeconfig)


@pytest.fixture(scope="session")
def api_client(control_plane: ControlPlane) -> client.ApiClient:
    return config.new_client_from_config(config_file=str(control_plane.kubeconfig))


@pytest.fixture
def namespace(api_client: client.ApiClient, request: pytest.FixtureRequest) -> Iterator[str]:
    slug = re.sub(r"[^a-z0-9]+", "-", request.node.name.lower())[:40].strip("-")
    name = f"t-{slug}-{uuid.uuid4().hex[:5]}"
    core = client.CoreV1Api(api_client)
    # Enforced "restricted" Pod Security: every step Job of every test must pass it.
    labels = {"pod-security.kubernetes.io/enforce": "restricted"}
    core.create_namespace(
        client.V1Namespace(metadata=client.V1ObjectMeta(name=name, labels=labels))
    )
    try:
        yield name
    finally:
        core.delete_namespace(name)


@pytest.fixture(scope="session", autouse=True)
def _no_proxy() -> None:
    # Loopback traffic must never go through a proxy configured on the machine.
    os.environ["NO_PROXY"] = os.environ["no_proxy"] = "127.0.0.1,localhost"
