"""End-to-end fixtures: the CRDs installed once, and the real operator as a child process."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from nofx_dev.controlplane import ControlPlane
from nofx_dev.processes import free_port, wait_until

from ..conftest import Kubectl

REPO = Path(__file__).resolve().parents[2]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "/tests/e2e/" in str(item.fspath):
            item.add_marker(pytest.mark.e2e)


@pytest.fixture(scope="session")
def crds(kubectl: Kubectl) -> None:
    kubectl("apply", "--server-side", "-f", str(REPO / "crds"))
    names = [
        f"crd/{path.name.removesuffix('.yaml')}" for path in (REPO / "crds").glob("*.nofx.dev.yaml")
    ]
    kubectl("wait", "--for=condition=Established", "--timeout=60s", *names)


@pytest.fixture(scope="module")
def start_plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., ControlPlane]]:
    """Starts control planes of a module's own (isolated from the session's operator), with the
    CRDs installed (and Kueue with kueue=True); all stop when the module ends."""
    planes: list[ControlPlane] = []

    def start(name: str, nodes: int = 2, kueue: bool = False) -> ControlPlane:
        plane = ControlPlane(tmp_path_factory.mktemp(name), nodes=nodes, kueue=kueue)
        plane.start()
        planes.append(plane)
        Kubectl(plane.kubeconfig)("apply", "--server-side", "-f", str(REPO / "crds"))
        return plane

    try:
        yield start
    finally:
        for plane in reversed(planes):
            plane.stop()


class OperatorProcess:
    """`nofx operator` against the test control plane; can be killed and started again."""

    def __init__(
        self,
        control_plane: ControlPlane,
        log_dir: Path,
        *extra: str,
        kubeconfig: Path | None = None,
    ) -> None:
        self.control_plane = control_plane
        self.kubeconfig = kubeconfig or control_plane.kubeconfig
        self.log_path = log_dir / "operator.log"
        self.extra = extra
        self.metrics_port = free_port()
        self.health_port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.metrics_port}/metrics"

    def start(self) -> None:
        log = open(self.log_path, "ab")  # noqa: SIM115 - the child owns it
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "nofx.cli",
                "operator",
                "--kubeconfig",
                str(self.kubeconfig),
                "--metrics-port",
                str(self.metrics_port),
                "--health-port",
                str(self.health_port),
                *self.extra,
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        log.close()
        wait_until(self._healthy, 60, "the operator's /healthz")

    def _healthy(self) -> bool:
        assert self.process is not None
        if self.process.poll() is not None:
            raise RuntimeError(f"the operator exited:\n{self.log_path.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.health_port}/healthz", timeout=1):
                return True
        except OSError:
            return False

    def kill(self) -> None:
        """SIGKILL: no chance to clean up, as in a node failure."""
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait()

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.kill()

    def metrics(self) -> str:
        with urllib.request.urlopen(self.metrics_url, timeout=5) as response:
            return response.read().decode()

    def metric(self, line_start: str) -> float:
        """The first sample whose line starts so (a name, with labels if any); 0 if none."""
        lines = [line for line in self.metrics().splitlines() if line.startswith(line_start)]
        return float(lines[0].rsplit(" ", 1)[1]) if lines else 0.0


@pytest.fixture(scope="session")
def operator(
    control_plane: ControlPlane, crds: None, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[OperatorProcess]:
    # A short Pod-creation timeout keeps the test of a Pod that cannot be created short.
    process = OperatorProcess(
        control_plane,
        tmp_path_factory.mktemp("operator"),
        "--standalone",
        "--pod-create-timeout=15",
    )
    process.start()
    try:
        yield process
    finally:
        process.stop()
        print(f"\noperator log: {process.log_path}")


def wait_for_phase(
    kubectl: Kubectl,
    namespace: str,
    run: str,
    phases: set[str],
    timeout: float = 60,
    message_has: str | None = None,
) -> dict:
    """The Run once its phase is one of these (and its message says message_has, if given)."""
    deadline = time.monotonic() + timeout
    body: dict = {}
    while time.monotonic() < deadline:
        body = kubectl.json("get", "run", run, "-n", namespace)
        status = body.get("status") or {}
        if status.get("phase") in phases and (message_has or "") in (status.get("message") or ""):
            return body
        time.sleep(0.2)
    wanted = f"{phases} saying {message_has!r}" if message_has else f"{phases}"
    raise AssertionError(f"Run {run} never reached {wanted}; status: {body.get('status')}")
