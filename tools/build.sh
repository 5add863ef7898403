#!/usr/bin/env bash
# Builds the pinned control-plane tools from Go modules into a cache outside the repo, keyed by
# the exact pins (the go.mod/go.sum of the modules this version builds) and the Go version. A warm
# cache makes this a no-op. Prints the cache's bin directory on the last line of stdout.
#   bash tools/build.sh        Kubernetes 1.37, the newest supported (what `make test` runs on)
#   bash tools/build.sh 1.35   Kubernetes 1.35, the oldest supported (`make smoke-oldest`)
# With 1.37 it also builds Kueue (tools/kueue) and copies its CRDs and webhook manifests from the
# module into the cache's kueue/ directory, beside bin/, for `nofx_dev` to start it on demand.
# docs/kubernetes-versions.md says what each version needs and how to move the pins.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
minor="${1:-1.37}"
case "$minor" in
  1.37) k8s_version=v1.37.2 k8s_module=kubernetes etcd_module=etcd extra=(kueue) ;;
  1.35) k8s_version=v1.35.4 k8s_module=kubernetes-1.35 etcd_module=etcd-1.35 extra=() ;;
  *) echo "usage: $0 [1.37|1.35]" >&2; exit 2 ;;
esac
# kwok, helm and kubeconform are clients that work with every supported version: one pin each.
modules=("$k8s_module" "$etcd_module" kwok helm kubeconform "${extra[@]}")

key=$( (go version; for m in "${modules[@]}"; do cat "$here/$m/go.mod" "$here/$m/go.sum"; done
        cat "$0") | sha256sum | cut -c1-16)
cache="${NOFX_TOOLS_CACHE:-$HOME/.cache/nofx-tools}/$minor-$key"
bin="$cache/bin"
if [ -f "$cache/.complete" ]; then
  echo "control-plane tools $k8s_version: cached in $bin (cold build took $(cat "$cache/.build-seconds") s)" >&2
  echo "$bin"
  exit 0
fi

mkdir -p "$bin"
start=$(date +%s)
export CGO_ENABLED=0
# Without these the binaries report v0.0.0-master+$Format:%H$, which kubectl cannot parse.
k8s_ldflags="-s -w -X k8s.io/component-base/version.gitVersion=$k8s_version \
 -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=${minor#1.} \
 -X k8s.io/client-go/pkg/version.gitVersion=$k8s_version \
 -X k8s.io/component-base/version.gitTreeState=clean"

build() { # module-dir package output-name [ldflags]
  local t0=$(date +%s)
  (cd "$here/$1" && go build -trimpath -ldflags "${4:--s -w}" -o "$bin/$3" "$2")
  echo "built $3 in $(( $(date +%s) - t0 )) s" >&2
}

build "$k8s_module" k8s.io/kubernetes/cmd/kube-apiserver kube-apiserver "$k8s_ldflags"
build "$k8s_module" k8s.io/kubernetes/cmd/kube-controller-manager kube-controller-manager "$k8s_ldflags"
build "$k8s_module" k8s.io/kubernetes/cmd/kube-scheduler kube-scheduler "$k8s_ldflags"
build "$k8s_module" k8s.io/kubernetes/cmd/kubectl kubectl "$k8s_ldflags"
build "$etcd_module" go.etcd.io/etcd/server/v3 etcd
build kwok sigs.k8s.io/kwok/cmd/kwok kwok
build helm helm.sh/helm/v3/cmd/helm helm "-s -w -X helm.sh/helm/v3/internal/version.version=v3.19.0"
build kubeconform github.com/yannh/kubeconform/cmd/kubeconform kubeconform
if [ "${#extra[@]}" -gt 0 ]; then
  kueue_version=$(cd "$here/kueue" && go list -m -f '{{.Version}}' sigs.k8s.io/kueue)
  build kueue sigs.k8s.io/kueue/cmd/kueue kueue \
    "-s -w -X sigs.k8s.io/kueue/pkg/version.GitVersion=$kueue_version"
  kueue_src=$(cd "$here/kueue" && go list -m -f '{{.Dir}}' sigs.k8s.io/kueue)/config/components
  rm -rf "$cache/kueue" && mkdir -p "$cache/kueue/crds"
  cp "$kueue_src"/crd/bases/*.yaml "$cache/kueue/crds/"
  cp "$kueue_src/webhook/manifests.yaml" "$cache/kueue/webhooks.yaml"
  chmod -R u+w "$cache/kueue"
fi

echo $(( $(date +%s) - start )) > "$cache/.build-seconds"
touch "$cache/.complete"
echo "control-plane tools $k8s_version: cold build took $(cat "$cache/.build-seconds") s into $bin" >&2
echo "$bin"
