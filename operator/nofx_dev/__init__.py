"""A real Kubernetes control plane and real Postgres servers as local processes.

For development, tests, demos and benchmarks on machines without Docker: etcd, kube-apiserver,
kube-controller-manager, kube-scheduler and kwok (the fake kubelet) built from pinned Go modules
(see tools/), plus Postgres servers run as an unprivileged user. Not used by the operator itself.
"""
