"""Queues belong to Kueue: a Run's step Jobs are Kueue workloads of one LocalQueue in the Run's
namespace, named by the Run, else by its Template, else by the namespace's label below (the
platform admin's default for every Run there). No queue named anywhere: the steps are not
queued, as before Kueue."""

from __future__ import annotations

from collections.abc import Mapping

# On a namespace: the LocalQueue its Runs use unless they or their Templates name one.
NAMESPACE_QUEUE_LABEL = "nofx.dev/queue-name"
# On a step Job: the LocalQueue Kueue admits it from (Kueue's own label).
KUEUE_QUEUE_LABEL = "kueue.x-k8s.io/queue-name"


def namespace_queue(labels: Mapping[str, str]) -> str | None:
    return labels.get(NAMESPACE_QUEUE_LABEL) or None
