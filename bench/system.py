"""The system under test: `Bench` starts Postgres, a local control plane (with its audit log)
and the operator, stops them, and reads them: the operator's /metrics, the API server's
request counts, the CPU and memory each process used, and, with --profile, py-spy's samples
of the operator and the API server's own profile.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

from kubernetes import client, config
from measure import Samples, cpu_seconds, parse_samples, with_children

from nofx.mirror.store import Store
from nofx_dev import policies
from nofx_dev.audit import AuditLog
from nofx_dev.controlplane import ControlPlane
from nofx_dev.postgres import PostgresServer
from nofx_dev.processes import ManagedProcess, free_port, wait_until
from nofx_dev.tools import REPO_ROOT, tool_path

# The operator's own client certificate: its writes are told apart in the API server's audit log
# from those of the controllers, the scheduler, kwok and this benchmark's client (nofx-admin).
OPERATOR_USER = "nofx-operator"


class Bench:
    def __init__(self, state_dir: Path, profiling: bool = False) -> None:
        self.plane = ControlPlane(state_dir / "plane", audit_log=True, profiling=profiling)
        self.audit = AuditLog(self.plane.audit_log_path)
        self.postgres = PostgresServer(Path(tempfile.mkdtemp(prefix="nofx-bench-pg-")) / "server")
        self.operator: ManagedProcess | None = None
        self.metrics_port = free_port()
        self.api: client.ApiClient | None = None

    def start(self) -> None:
        self.postgres.start()
        self.plane.start()
        self.api = config.new_client_from_config(config_file=str(self.plane.kubeconfig))
        self.kubectl("apply", "--server-side", "-f", str(REPO_ROOT / "crds"))
        # As the chart installs them on 1.36+: new Runs carry the audit finalizer from creation.
        self.kubectl("apply", "-k", str(REPO_ROOT / "policies"))
        policies.wait_until_enforced(self.plane.kubeconfig)
        with Store(self.postgres.dsn, "bench") as store:
            store.migrate()
        operator_kubeconfig = self.plane.kubeconfig_for(OPERATOR_USER, groups=["system:masters"])
        health = free_port()
        self.operator = ManagedProcess(
            "nofx-operator",
            [
                sys.executable, "-m", "nofx.cli", "operator", "--standalone",
                "--kubeconfig", str(operator_kubeconfig),
                "--metrics-port", str(self.metrics_port), "--health-port", str(health),
                "--database-url", self.postgres.dsn, "--region", "bench",
            ],
            self.plane.state_dir / "logs" / "operator.log",
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )  # fmt: skip
        self.operator.start()
        wait_until(
            lambda: self._get(f"http://127.0.0.1:{health}/healthz") is not None, 60, "operator"
        )

    def stop(self) -> None:
        if self.operator:
            self.operator.stop()
        self.plane.stop()
        self.postgres.stop()

    def kubectl(self, *args: str, stdin: str | None = None) -> str:
        command = [str(tool_path("kubectl")), "--kubeconfig", str(self.plane.kubeconfig), *args]
        return subprocess.run(
            command, input=stdin, text=True, capture_output=True, check=True
        ).stdout

    def _get(self, url: str) -> str | None:
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                return str(response.read().decode())
        except OSError:
            return None

    def scrape(self) -> Samples:
        """Every sample on the operator's /metrics."""
        return parse_samples(self._get(f"http://127.0.0.1:{self.metrics_port}/metrics") or "")

    def metric(self, name: str, **labels: str) -> float:
        """Sum of the samples of one metric on the operator's /metrics that carry these labels."""
        return self.scrape().total(name, **labels)

    def mirror_drained(self) -> bool:
        """No event waits for Postgres, twice in a row (between writes the queue looks empty
        for a moment)."""
        if self.metric("nofx_mirror_pending_age_seconds") > 0:
            return False
        time.sleep(2)
        return self.metric("nofx_mirror_pending_age_seconds") == 0

    def apiserver_requests(self) -> Samples:
        """apiserver_request_total: every request the API server served, by verb and resource."""
        assert self.api is not None
        method, url, headers, _, _ = self.api.param_serialize(
            "GET", "/metrics", auth_settings=["BearerToken"]
        )
        response = self.api.call_api(method, url, header_params=headers)
        response.read()
        text = response.data.decode()
        return parse_samples(text).only("apiserver_request_total")

    def operator_usage(self) -> dict[str, float]:
        assert self.operator and self.operator.popen
        pid = self.operator.popen.pid
        status = Path(f"/proc/{pid}/status").read_text()
        rss_kb = int(
            next(line.split()[1] for line in status.splitlines() if line.startswith("VmRSS"))
        )
        return {"rss_mib": round(rss_kb / 1024, 1), "cpu_seconds": round(cpu_seconds(pid), 2)}

    def cpu_by_process(self) -> dict[str, float]:
        """CPU seconds used so far by each server on these cores: the control plane's, the
        operator, Postgres (all its processes) and this benchmark's client."""
        pids = {proc.name: proc.popen.pid for proc in self.plane.processes if proc.popen}
        if self.operator and self.operator.popen:
            pids["operator"] = self.operator.popen.pid
        used = {name: cpu_seconds(pid) for name, pid in pids.items()}
        postmaster = int((self.postgres.data_dir / "postmaster.pid").read_text().split()[0])
        used["postgres"] = sum(cpu_seconds(pid) for pid in with_children(postmaster))
        own = os.times()
        used["benchmark client"] = own.user + own.system
        return used

    @contextlib.contextmanager
    def profiled(self, out: Path | None) -> Iterator[None]:
        """py-spy samples the operator (the thread holding the GIL) while the block runs,
        and the API server profiles itself for 20 s of it (apiserver.pprof, for go tool pprof)."""
        if out is None:
            yield
            return
        assert self.operator and self.operator.popen
        out.mkdir(parents=True, exist_ok=True)
        threading.Thread(target=self._apiserver_profile, args=(out,), daemon=True).start()
        command = [
            # --gil: only the thread running Python, so a thread waiting on a socket the
            # profiler cannot tell idle does not pass for CPU.
            str(Path(sys.executable).parent / "py-spy"), "record", "--nonblocking", "--gil",
            "--pid", str(self.operator.popen.pid), "--rate", "200",
            "--format", "raw", "--output", str(out / "profile.txt"),
        ]  # fmt: skip
        sampler = subprocess.Popen(command, stdout=subprocess.DEVNULL)
        try:
            yield
        finally:
            sampler.send_signal(signal.SIGINT)
            sampler.wait(timeout=60)

    def _apiserver_profile(self, out: Path) -> None:
        time.sleep(3)  # past the first Runs' creation, into the steady part
        command = [
            str(tool_path("kubectl")), "--kubeconfig", str(self.plane.kubeconfig),
            "get", "--raw", "/debug/pprof/profile?seconds=20",
        ]  # fmt: skip
        with open(out / "apiserver.pprof", "wb") as profile:
            subprocess.run(command, stdout=profile, check=False)
