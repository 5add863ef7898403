"""etcd, kube-apiserver, kube-controller-manager, kube-scheduler and kwok on loopback."""

from __future__ import annotations

import json
import logging
import ssl
import time
import urllib.request
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from nofx_dev import pki
from nofx_dev.processes import ManagedProcess, free_port, wait_until
from nofx_dev.tools import tool_path

log = logging.getLogger(__name__)

SERVICE_CIDR = "10.0.0.0/24"
SERVICE_IP = "10.0.0.1"
FAKE_NODE_ANNOTATION = "kwok.x-k8s.io/node"
CONTROLLERS = ",".join(
    [
        "job-controller",
        "garbage-collector-controller",
        "namespace-controller",
        "serviceaccount-controller",
        "serviceaccount-token-controller",
        "ttl-after-finished-controller",
        # For the Helm chart's Deployment.
        "deployment-controller",
        "replicaset-controller",
    ]
)


@dataclass
class ControlPlane:
    """A private Kubernetes control plane whose files all live under state_dir."""

    state_dir: Path
    nodes: int = 2
    processes: list[ManagedProcess] = field(default_factory=list)
    apiserver_port: int = 0
    startup_seconds: float = 0.0

    @property
    def kubeconfig(self) -> Path:
        return self.state_dir / "kubeconfig"

    @property
    def server(self) -> str:
        return f"https://127.0.0.1:{self.apiserver_port}"

    def _process(self, name: str, argv: list[str]) -> ManagedProcess:
        proc = ManagedProcess(name, argv, self.state_dir / "logs" / f"{name}.log")
        proc.start()
        self.processes.append(proc)
        return proc

    def start(self, timeout: float = 60.0) -> None:
        started = time.monotonic()
        pki_dir = self.state_dir / "pki"
        (self.state_dir / "logs").mkdir(parents=True, exist_ok=True)
        pki.create_pki(pki_dir, SERVICE_IP)
        etcd_port, etcd_peer_port = free_port(), free_port()
        self.apiserver_port = free_port()
        self._write_kubeconfig(pki_dir)
        try:
            etcd = self._process("etcd", self._etcd_argv(etcd_port, etcd_peer_port))
            apiserver = self._process("kube-apiserver", self._apiserver_argv(pki_dir, etcd_port))

            def apiserver_ready() -> bool:
                etcd.check_alive()
                apiserver.check_alive()
                return self._get("/readyz") == "ok"

            wait_until(apiserver_ready, timeout, "kube-apiserver /readyz")
            self._process("kube-controller-manager", self._controller_manager_argv(pki_dir))
            self._process("kube-scheduler", self._scheduler_argv())
            self._process("kwok", self._kwok_argv())
            self._create_nodes()
            wait_until(self._ready, timeout, "fake Nodes Ready and the default ServiceAccount")
        except BaseException:
            self.stop()
            raise
        self.startup_seconds = time.monotonic() - started

    def stop(self) -> None:
        # Clients before servers, etcd last: an apiserver without etcd hangs in shutdown.
        for proc in reversed(self.processes):
            proc.stop()
        self.processes.clear()

    def _ready(self) -> bool:
        for proc in self.processes:
            proc.check_alive()
        nodes = json.loads(self._get("/api/v1/nodes") or "{}").get("items", [])
        ready = [
            n
            for n in nodes
            if any(
                c["type"] == "Ready" and c["status"] == "True"
                for c in n.get("status", {}).get("conditions", [])
            )
        ]
        service_account = self._get("/api/v1/namespaces/default/serviceaccounts/default")
        return len(ready) >= self.nodes and service_account is not None

    def _ssl_context(self) -> ssl.SSLContext:
        pki_dir = self.state_dir / "pki"
        context = ssl.create_default_context(cafile=str(pki_dir / "ca.crt"))
        context.load_cert_chain(pki_dir / "admin.crt", pki_dir / "admin.key")
        return context

    def _get(self, path: str) -> str | None:
        try:
            with urllib.request.urlopen(
                self.server + path, context=self._ssl_context(), timeout=2
            ) as response:
                return str(response.read().decode())
        except OSError:
            return None

    def _post(self, path: str, body: dict[str, object]) -> None:
        request = urllib.request.Request(
            self.server + path,
            data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        urllib.request.urlopen(request, context=self._ssl_context(), timeout=5).close()

    def _create_nodes(self) -> None:
        for index in range(self.nodes):
            name = f"kwok-node-{index}"
            capacity = {"cpu": "64", "memory": "512Gi", "pods": "2000"}
            self._post(
                "/api/v1/nodes",
                {
                    "apiVersion": "v1",
                    "kind": "Node",
                    "metadata": {
                        "name": name,
                        "annotations": {FAKE_NODE_ANNOTATION: "fake"},
                        "labels": {
                            "type": "kwok",
                            "kubernetes.io/hostname": name,
                            "kubernetes.io/os": "linux",
                        },
                    },
                    "status": {"allocatable": capacity, "capacity": capacity},
                },
            )

    def _write_kubeconfig(self, pki_dir: Path) -> None:
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {
                    "name": "nofx-local",
                    "cluster": {
                        "server": self.server,
                        "certificate-authority": str(pki_dir / "ca.crt"),
                    },
                }
            ],
            "users": [
                {
                    "name": "nofx-admin",
                    "user": {
                        "client-certificate": str(pki_dir / "admin.crt"),
                        "client-key": str(pki_dir / "admin.key"),
                    },
                }
            ],
            "contexts": [
                {"name": "nofx-local", "context": {"cluster": "nofx-local", "user": "nofx-admin"}}
            ],
            "current-context": "nofx-local",
        }
        self.kubeconfig.write_text(json.dumps(config, indent=2))

    def _etcd_argv(self, port: int, peer_port: int) -> list[str]:
        client, peer = f"http://127.0.0.1:{port}", f"http://127.0.0.1:{peer_port}"
        return [
            str(tool_path("etcd")),
            "--name=local",
            f"--data-dir={self.state_dir / 'etcd'}",
            f"--listen-client-urls={client}",
            f"--advertise-client-urls={client}",
            f"--listen-peer-urls={peer}",
            f"--initial-advertise-peer-urls={peer}",
            f"--initial-cluster=local={peer}",
            "--unsafe-no-fsync",  # test data only: durability across power loss is not needed
            "--log-level=warn",
        ]

    def _apiserver_argv(self, pki_dir: Path, etcd_port: int) -> list[str]:
        return [
            str(tool_path("kube-apiserver")),
            f"--etcd-servers=http://127.0.0.1:{etcd_port}",
            "--bind-address=127.0.0.1",
            "--advertise-address=127.0.0.1",
            # Since 1.37 the endpoint reconciler refuses a loopback address for the `kubernetes`
            # Service; nothing here runs in a Pod that would need that Service.
            "--endpoint-reconciler-type=none",
            f"--secure-port={self.apiserver_port}",
            f"--tls-cert-file={pki_dir / 'apiserver.crt'}",
            f"--tls-private-key-file={pki_dir / 'apiserver.key'}",
            f"--client-ca-file={pki_dir / 'ca.crt'}",
            f"--service-account-key-file={pki_dir / 'sa.pub'}",
            f"--service-account-signing-key-file={pki_dir / 'sa.key'}",
            "--service-account-issuer=https://kubernetes.default.svc",
            f"--service-cluster-ip-range={SERVICE_CIDR}",
            "--authorization-mode=Node,RBAC",
            # Without the node-lifecycle controller nobody would lift the not-ready taint that
            # this plugin puts on new (fake) Nodes.
            "--disable-admission-plugins=TaintNodesByCondition",
            "--profiling=false",
            "--v=1",
        ]

    def _controller_manager_argv(self, pki_dir: Path) -> list[str]:
        return [
            str(tool_path("kube-controller-manager")),
            f"--kubeconfig={self.kubeconfig}",
            f"--controllers={CONTROLLERS}",
            "--leader-elect=false",
            "--secure-port=0",
            "--use-service-account-credentials=false",
            f"--service-account-private-key-file={pki_dir / 'sa.key'}",
            f"--root-ca-file={pki_dir / 'ca.crt'}",
            # Local defaults are tuned for big clusters; tests want Jobs to react quickly.
            "--concurrent-job-syncs=20",
            "--concurrent-gc-syncs=20",
            # client-go's default of 20 requests/s would make the Job controller, not the
            # operator, the bottleneck of every benchmark.
            "--kube-api-qps=300",
            "--kube-api-burst=600",
            "--v=1",
        ]

    def _scheduler_argv(self) -> list[str]:
        return [
            str(tool_path("kube-scheduler")),
            f"--kubeconfig={self.kubeconfig}",
            "--leader-elect=false",
            "--kube-api-qps=300",
            "--kube-api-burst=600",
            "--secure-port=0",
            "--v=1",
        ]

    def _kwok_argv(self) -> list[str]:
        stages = self.state_dir / "kwok-stages.yaml"
        stages.write_text(resources.files("nofx_dev").joinpath("kwok-stages.yaml").read_text())
        return [
            str(tool_path("kwok")),
            f"--kubeconfig={self.kubeconfig}",
            f"--config={stages}",
            "--manage-all-nodes=false",
            f"--manage-nodes-with-annotation-selector={FAKE_NODE_ANNOTATION}=fake",
            "--node-lease-duration-seconds=40",
            "--cidr=10.244.0.0/16",
        ]
