"""Measurement primitives of the benchmark, which need no cluster: the machine a run
measured on, p50/p95/p99 of a list of durations, the steady rate of a series of events, the
operator's and the API server's Prometheus samples (`Samples`, `parse_samples`) and the CPU
seconds a process and its children used, read from /proc.
"""

from __future__ import annotations

import contextlib
import os
import platform
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families


def machine() -> dict[str, Any]:
    cpu = "unknown"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    memory_kb = int(Path("/proc/meminfo").read_text().split()[1])
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gib": round(memory_kb / 2**20, 1),
        "python": platform.python_version(),
        "kernel": platform.release(),
    }


def percentiles(values: list[float]) -> dict[str, float | int | None]:
    if len(values) < 2:
        return {"n": len(values), "p50": None, "p95": None, "p99": None}
    cuts = statistics.quantiles(values, n=100, method="inclusive")
    return {
        "n": len(values),
        "p50": round(cuts[49] * 1000, 1),
        "p95": round(cuts[94] * 1000, 1),
        "p99": round(cuts[98] * 1000, 1),
    }


@dataclass
class Samples:
    """Prometheus samples: (name, sorted labels) → value."""

    values: dict[tuple[str, tuple[tuple[str, str], ...]], float]

    def total(self, name: str, **labels: str) -> float:
        wanted = set(labels.items())
        return sum(v for (n, ls), v in self.values.items() if n == name and wanted <= set(ls))

    def only(self, name: str) -> Samples:
        return Samples({k: v for k, v in self.values.items() if k[0] == name})

    def minus(self, before: Samples) -> Samples:
        return Samples({k: v - before.values.get(k, 0.0) for k, v in self.values.items()})

    def per_request_kind(self, runs: int) -> dict[str, float]:
        """Requests per Run by verb, resource and subresource, e.g. "PATCH runs/status"."""
        kinds: dict[str, float] = {}
        for (_, labels), value in self.values.items():
            label = dict(labels)
            if value <= 0 or label.get("verb") in ("WATCH", "CONNECT"):
                continue
            kind = f"{label.get('verb')} {label.get('resource')}"
            if label.get("subresource"):
                kind += f"/{label['subresource']}"
            kinds[kind] = kinds.get(kind, 0.0) + value
        return {k: round(v / runs, 2) for k, v in sorted(kinds.items(), key=lambda kv: -kv[1])}

    def histogram_quantiles(self, name: str) -> dict[str, float | None]:
        """p50/p95/p99 in ms of a histogram's observations in this sample, interpolated
        within buckets as Prometheus' histogram_quantile does."""
        buckets = sorted(
            (float(dict(labels)["le"]), value)
            for (n, labels), value in self.values.items()
            if n == f"{name}_bucket"
        )
        if not buckets or buckets[-1][1] <= 0:
            return {"p50": None, "p95": None, "p99": None}
        total = buckets[-1][1]
        result: dict[str, float | None] = {}
        for quantile in (0.5, 0.95, 0.99):
            rank, lower, below = quantile * total, 0.0, 0.0
            for upper, count in buckets:
                if count >= rank:
                    if upper == float("inf"):
                        result[f"p{int(quantile * 100)}"] = round(lower * 1000, 1)
                    else:
                        share = (rank - below) / (count - below) if count > below else 1.0
                        value = lower + (upper - lower) * share
                        result[f"p{int(quantile * 100)}"] = round(value * 1000, 1)
                    break
                lower, below = upper, count
        return result


def parse_samples(text: str) -> Samples:
    values: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            values[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return Samples(values)


def cpu_seconds(pid: int) -> float:
    """User and system CPU seconds of a process (all its threads); 0 once it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def cpu_ms_per(before: dict[str, float], after: dict[str, float], count: int) -> dict[str, float]:
    """CPU ms per unit of work (a Run, a chain) of each process between two readings of
    Bench.cpu_by_process, the busiest first."""
    used = {name: after[name] - before.get(name, 0.0) for name in after}
    return {
        name: round(1000 * seconds / count, 1)
        for name, seconds in sorted(used.items(), key=lambda item: -item[1])
    }


def with_children(parent: int) -> list[int]:
    """A process and its direct children (Postgres' backends and workers)."""
    children = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) == parent:
                    children.append(int(entry.name))
    return [parent, *children]


def sustained_rate(times: list[float]) -> float:
    """Events per second between the 10th and the 90th percentile of their times: the steady
    middle, without the ramp-up and the tail."""
    if len(times) < 10:
        return 0.0
    ordered = sorted(times)
    low, high = ordered[len(ordered) // 10], ordered[(len(ordered) * 9) // 10]
    count = (len(ordered) * 9) // 10 - len(ordered) // 10
    return round(count / (high - low), 1) if high > low else 0.0
