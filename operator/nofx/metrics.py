"""Prometheus metrics of the operator, served on /metrics by prometheus-client."""

from __future__ import annotations

from collections import Counter as Tally
from collections.abc import Iterator

from prometheus_client import REGISTRY, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from nofx.changes import AttemptFinished

RUN_PHASES = ("Pending", "Queued", "Running", "WaitingApproval", "Succeeded", "Failed", "Cancelled")
LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10, 30)

STEP_ATTEMPTS = Counter(
    "nofx_step_attempts_total", "Finished step attempts by outcome.", ["outcome"]
)
UNPRICED_MODEL = "(unpriced)"  # the model label of tokens an Agent that prices no model meters
TOKENS = Counter(
    "nofx_tokens_total",
    "Tokens that finished step attempts reported (nofx.usage), by namespace, agent, model and "
    "type (input, output, cached); model is (unpriced) for an Agent that prices no model.",
    ["namespace", "agent", "model", "type"],
)
COST = Counter(
    "nofx_cost_total",
    "Metered cost of finished step attempts, by namespace, agent, model and currency; model "
    "is empty for the wall-time cost. A float for dashboards: the bill is in Postgres.",
    ["namespace", "agent", "model", "currency"],
)
RECONCILE_SECONDS = Histogram(
    "nofx_reconcile_duration_seconds", "Time of one Run reconcile.", buckets=LATENCY_BUCKETS
)
FIRST_JOB_SECONDS = Histogram(
    "nofx_run_first_job_latency_seconds",
    "From a Run's creation to the creation of its first Job.",
    buckets=LATENCY_BUCKETS,
)
NEXT_JOB_SECONDS = Histogram(
    "nofx_step_next_job_latency_seconds",
    "From an upstream step's Job finishing to the creation of the next step's Job.",
    buckets=LATENCY_BUCKETS,
)
STEP_QUEUE_SECONDS = Histogram(
    "nofx_step_queue_seconds",
    "From the creation of a queued step's Job to Kueue's (first) admission of it.",
    buckets=(0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 300, 900, 3600),
)
STEP_POD_READS = Counter(
    "nofx_step_pod_reads_total",
    "Pods of finished step Jobs read for their outputs: from the operator's own Pod watch, or "
    "listed from the API server (the watch had not seen the Pod, or the Job failed).",
    ["source"],
)
RECONCILE_ERRORS = Counter(
    "nofx_reconcile_errors_total",
    "Run reconciles that raised: transient (an outage, retried while it lasts) or not (a fault "
    "that fails the Run after a few tries).",
    ["transient"],
)


def count_attempt(namespace: str, attempt: AttemptFinished) -> None:
    """Counts one finished step attempt: its outcome, its tokens, its cost."""
    STEP_ATTEMPTS.labels(outcome=attempt.outcome).inc()
    agent, currency = attempt.agent, attempt.currency
    COST.labels(namespace, agent, "", currency).inc(float(attempt.cost))
    for used in attempt.tokens:
        # A model name comes from the step; only an Agent's priced models bound the label's values.
        model = used.model if used.priced else UNPRICED_MODEL
        for kind, count in (
            ("input", used.input_tokens),
            ("output", used.output_tokens),
            ("cached", used.cached_tokens),
        ):
            TOKENS.labels(namespace, agent, model, kind).inc(count)
        COST.labels(namespace, agent, model, currency).inc(float(used.cost))


_phases: dict[tuple[str, str], str] = {}


def set_run_phase(key: tuple[str, str], phase: str | None) -> None:
    if phase:
        _phases[key] = phase


def forget_run(key: tuple[str, str]) -> None:
    _phases.pop(key, None)


def runs_held() -> int:
    return len(_phases)


class _RunsByPhase(Collector):
    """Counted at scrape time from the last phase seen per Run, so no gauge drifts."""

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily(
            "nofx_runs", "Runs held by the operator, by phase.", labels=["phase"]
        )
        counts = Tally(_phases.values())
        for phase in RUN_PHASES:
            family.add_metric([phase], counts.get(phase, 0))
        yield family


REGISTRY.register(_RunsByPhase())

MIRROR_EVENTS = Counter("nofx_mirror_events_total", "Audit events written to Postgres.")
MIRROR_ERRORS = Counter("nofx_mirror_errors_total", "Failed mirror writes (each is retried).")
MIRROR_WRITE_SECONDS = Histogram(
    "nofx_mirror_write_seconds", "Time of one batched mirror write.", buckets=LATENCY_BUCKETS
)
MIRROR_LAG_SECONDS = Histogram(
    "nofx_mirror_lag_seconds",
    "From an audit event happening to its row being in Postgres.",
    buckets=LATENCY_BUCKETS,
)
MIRROR_PENDING_AGE = Gauge(
    "nofx_mirror_pending_age_seconds",
    "Age of the oldest audit entry or registry version not yet in Postgres (held back after a"
    " refusal included) or not yet removed from its Run's outbox.",
)
MIRROR_REJECTED = Counter(
    "nofx_mirror_rejected_total",
    "Objects whose rows Postgres refused, held back (and retried) while the others flowed.",
    ["kind"],
)
