#!/usr/bin/env bash
# Builds the pinned control-plane tools from Go modules into a cache outside the repo, keyed by
# the exact pins (every go.mod/go.sum here) and the Go version. A warm cache makes this a no-op.
# Prints the cache's bin directory on the last line of stdout.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
k8s_version=v1.37.2

key=$( (go version; cat "$here"/*/go.mod "$here"/*/go.sum "$0") | sha256sum | cut -c1-16)
cache="${NOFX_TOOLS_CACHE:-$HOME/.cache/nofx-tools}/$key"
bin="$cache/bin"
if [ -f "$cache/.complete" ]; then
  echo "control-plane tools: cached in $bin (cold build took $(cat "$cache/.build-seconds") s)" >&2
  echo "$bin"
  exit 0
fi

mkdir -p "$bin"
start=$(date +%s)
export CGO_ENABLED=0
k8s_ldflags="-s -w -X k8s.io/component-base/version.gitVersion=$k8s_version \
 -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=37 \
 -X k8s.io/client-go/pkg/version.gitVersion=$k8s_version \
 -X k8s.io/component-base/version.gitTreeState=clean"

build() { # module-dir package output-name [ldflags]
  local t0=$(date +%s)
  (cd "$here/$1" && go build -trimpath -ldflags "${4:--s -w}" -o "$bin/$3" "$2")
  echo "built $3 in $(( $(date +%s) - t0 )) s" >&2
}

build kubernetes k8s.io/kubernetes/cmd/kube-apiserver kube-apiserver "$k8s_ldflags"
build kubernetes k8s.io/kubernetes/cmd/kube-controller-manager kube-controller-manager "$k8s_ldflags"
build kubernetes k8s.io/kubernetes/cmd/kube-scheduler kube-scheduler "$k8s_ldflags"
build kubernetes k8s.io/kubernetes/cmd/kubectl kubectl "$k8s_ldflags"
build etcd go.etcd.io/etcd/server/v3 etcd
build kwok sigs.k8s.io/kwok/cmd/kwok kwok
build helm helm.sh/helm/v3/cmd/helm helm "-s -w -X helm.sh/helm/v3/internal/version.version=v3.19.0"
build kubeconform github.com/yannh/kubeconform/cmd/kubeconform kubeconform

echo $(( $(date +%s) - start )) > "$cache/.build-seconds"
touch "$cache/.complete"
echo "control-plane tools: cold build took $(cat "$cache/.build-seconds") s into $bin" >&2
echo "$bin"
