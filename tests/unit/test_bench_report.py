"""The benchmark's summary: the targets read the right figures, and an earlier run's figures
stand beside this one's (bench/report.py)."""

from __future__ import annotations

import copy
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
import measure
import report


def quantiles(p95: float) -> dict[str, float]:
    return {"n": 10, "p50": p95 / 2, "p95": p95, "p99": p95}


def scenario(target: float | None, writes: float, p95: float) -> dict[str, Any]:
    return {
        "runs_per_second_target": target, "runs": 100, "runs_per_second_applied": target or 50,
        "runs_per_second_finished": 14.0, "step_jobs_per_second": 42.0,
        "apply_to_first_job_ms": quantiles(p95), "step_finished_to_next_job_ms": quantiles(p95),
        "apply_to_succeeded_ms": quantiles(p95 * 10), "reconciles_per_run": 4.0,
        "operator_cpu_ms_per_run": 24.0, "mirror_events": 800, "mirror_events_per_second": 40,
        "mirror_lag_ms": quantiles(200.0), "api_requests_per_run": {"POST jobs": 3.0},
        "writes_per_run": {
            "runs": 100, "operator_total": writes, "system_total": 39.0,
            "by_user": {"nofx-operator": writes}, "system_by_kind": {"create jobs": 3.0},
            "operator_by_kind": {"create jobs": 3.0, "patch runs/status": writes - 3},
            "failed": {"by_user": {}, "operator_by_kind": {}, "system_by_kind": {}},
        },
    }  # fmt: skip


def results(writes: float = 8.0, p95: float = 90.0, held: int = 10_000) -> dict[str, Any]:
    probe = {"runs_present": 10, "reconciles": 50, "reconcile_ms_mean": 5.0,
             "operator_cpu_ms_per_reconcile": 4.0, "apply_to_first_job_ms": quantiles(p95),
             "operator_rss_mib": 100.0}  # fmt: skip
    return {
        "machine": {"cpu": "test", "cores": 2, "memory_gib": 24, "python": "3.11"},
        "step_seconds": "1s",
        "latency": [scenario(5.0, writes, p95), scenario(20.0, writes, p95)],
        "throughput": scenario(None, writes, p95),
        "limit": {
            "api": {"jobs": 100, "jobs_per_second": 100.0, "api_writes_per_second": 200.0},
            "lifecycle": {"jobs": 100, "completed": 100, "seconds": 2.0, "jobs_per_second": 50.0},
        },
        "scale": {
            "baseline": probe,
            "at_scale": {**probe, "runs_present": held},
            "held": {
                "runs": held,
                "applied_seconds": 1.0,
                "settled_seconds": 2.0,
                "operator_cpu_seconds_to_settle": 1.0,
                "operator_cpu_percent_idle": 0.1,
                "operator_rss_mib": 240.0,
            },
        },
    }


def test_each_target_is_met_or_missed_by_its_own_figure() -> None:
    met = {target: ok for target, _, ok in report.targets(results())}
    assert all(met.values()), met
    missed = {t: ok for t, _, ok in report.targets(results(writes=9.0, p95=150.0, held=2000))}
    assert [ok for ok in missed.values()] == [False, False, True, False, True, True]


def test_an_earlier_run_stands_beside_this_one() -> None:
    before = results(writes=12.0)
    before["label"] = "main at abc123"
    del before["throughput"]["mirror_lag_ms"]  # an older results.json lacked a figure
    text = report.summary(results(), copy.deepcopy(before))
    assert "Before: main at abc123." in text
    assert "| operator API writes per Run (all at once) | 12.0 | 8.0 |" in text
    assert "| mirror lag p95 ms (all at once) | n/a | 200.0 |" in text
    assert "Before and after" not in report.summary(results())


def test_the_job_chain_limit_the_stages_and_cpu_by_process_are_shown_when_measured() -> None:
    measured = results()
    measured["limit"]["chained"] = {"chains": 100, "jobs": 300, "jobs_per_second": 60.0}
    measured["throughput"]["step_stages_ms"] = {"pod created → pod bound": quantiles(40.0)}
    measured["throughput"]["cpu_ms_per_run_by_process"] = {"kube-apiserver": 90.0, "operator": 20.0}
    text = report.summary(measured)
    assert "70% of the same control plane running chains of three Jobs" in text
    assert "| pod created → pod bound | 20.0 | 40.0 |" in text
    assert "kube-apiserver 90.0, operator 20.0; 110.0 in all." in text
    row = next(
        figure for target, figure, _ in report.targets(measured) if "finished Runs" in target
    )
    assert row.endswith("84% of the Job-lifecycle limit, 70% of the Job-chain limit")
    assert "chains" not in report.summary(results()), "older results lack the chain limit"
    assert "Beyond what" not in text, "older chain limits lack their CPU"


def test_what_a_run_adds_to_its_jobs_alone_is_shown_when_the_chains_were_measured() -> None:
    measured = results()
    measured["limit"]["chained"] = {
        "chains": 100, "jobs": 300, "jobs_per_second": 60.0,
        "cpu_ms_per_chain_by_process": {"kube-apiserver": 60.0, "kwok": 10.0},
        "writes_per_chain": 33.5, "writes_per_chain_by_user": {"kwok": 6.0, "nofx-admin": 3.0},
    }  # fmt: skip
    measured["throughput"]["cpu_ms_per_run_by_process"] = {
        "kube-apiserver": 90.0,
        "operator": 20.0,
        "kwok": 10.0,
    }
    text = report.summary(measured)
    assert "A chain of three Jobs by itself costs 33.5 writes (kwok 6.0, nofx-admin 3.0)" in text
    assert "kube-apiserver 60.0, kwok 10.0; 70.0 in all." in text
    assert "no operator: kube-apiserver +30.0, operator +20.0; +50.0 in all." in text


def test_cpu_per_unit_of_work_is_each_process_share_between_two_readings_busiest_first() -> None:
    before = {"kube-apiserver": 10.0, "operator": 2.0}
    after = {"kube-apiserver": 10.5, "operator": 3.0, "postgres": 0.1}  # postgres: new since
    per_run = measure.cpu_ms_per(before, after, 10)
    assert per_run == {"operator": 100.0, "kube-apiserver": 50.0, "postgres": 10.0}
    assert list(per_run) == ["operator", "kube-apiserver", "postgres"]
