"""The benchmark's report: bench/summary.md from results.json (headline figures against the
limits measured in the same run, the tables, the targets of issue 14, and with an earlier
results.json, before and after side by side) and the latency plot."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any


def summary(results: dict[str, Any], before: dict[str, Any] | None = None) -> str:
    """bench/summary.md; with `before` (an earlier results.json), a before/after table."""
    machine_, limit = results["machine"], results["limit"]
    lines = [
        "# NOFX benchmark",
        "",
        *headline(results),
        "",
        f"Machine: {machine_['cpu']}, {machine_['cores']} cores, {machine_['memory_gib']} GiB; "
        f"Python {machine_['python']}; step Pods live {results['step_seconds']} on kwok. "
        "The operator, the control plane (etcd, kube-apiserver, kube-controller-manager, "
        "kube-scheduler, kwok), Postgres and this benchmark's client share these cores.",
        "",
        "## The limit",
        "",
        f"- API writes: our own client creating Jobs and patching their status (16 threads): "
        f"**{limit['api']['jobs_per_second']} Jobs/s** "
        f"({limit['api']['api_writes_per_second']} writes/s).",
        f"- Job lifecycle: our own client creating {limit['lifecycle']['jobs']} Jobs at once, "
        f"each with a {results['step_seconds']} Pod, no operator: "
        f"**{limit['lifecycle']['jobs_per_second']} Jobs/s** run to completion.",
        *chained_limit(limit, results["step_seconds"]),
        "",
        "## Latency and throughput (Runs of three sequential steps)",
        "",
        "| Runs/s applied | finished Runs/s | step Jobs/s | apply→first Job p50/p95/p99 ms "
        "| step done→next Job p50/p95/p99 ms | apply→Succeeded p50/p95 ms "
        "| operator CPU ms/Run | mirror events/s | mirror lag p95 ms "
        "| writes/Run operator / system |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    rows = [*results["latency"], results["throughput"]]
    for row in rows:
        first, nxt = row["apply_to_first_job_ms"], row["step_finished_to_next_job_ms"]
        done, writes = row["apply_to_succeeded_ms"], row["writes_per_run"]
        target = row["runs_per_second_target"]
        applied = f"{row['runs_per_second_applied']}" + (
            f" (target {target})" if target else f" (all {row['runs']} at once)"
        )
        lines.append(
            f"| {applied} | {row['runs_per_second_finished']} | {row['step_jobs_per_second']} "
            f"| {first['p50']}/{first['p95']}/{first['p99']} "
            f"| {nxt['p50']}/{nxt['p95']}/{nxt['p99']} | {done['p50']}/{done['p95']} "
            f"| {row['operator_cpu_ms_per_run']} | {row['mirror_events_per_second']} "
            f"| {row['mirror_lag_ms']['p95']} "
            f"| {writes['operator_total']} / {writes['system_total']} |"
        )
    throughput = results["throughput"]
    lines += where_time_and_cpu_go(throughput, limit.get("chained") or {})
    lines += [
        "",
        "API requests per Run at the highest rate, by the whole system (operator, Job "
        "controller, scheduler, kwok): "
        + ", ".join(f"{k} {v}" for k, v in throughput["api_requests_per_run"].items() if v >= 0.05)
        + ".",
        "",
        "## Scale",
        "",
    ]
    scale = results["scale"]
    held, base, big = scale["held"], scale["baseline"], scale["at_scale"]
    lines += [
        f"{held['runs']} Runs held in the cluster (each waiting for an approval): applied in "
        f"{held['applied_seconds']} s, all reconciled after {held['settled_seconds']} s "
        f"({held['operator_cpu_seconds_to_settle']} CPU-seconds of the operator); then, idle, "
        f"the operator uses {held['operator_cpu_percent_idle']} % of a core and "
        f"{held['operator_rss_mib']} MiB resident.",
        "",
        "| Runs present | reconciles | mean reconcile ms | operator CPU ms/reconcile "
        "| operator CPU ms/Run | apply→first Job p50/p95 ms | operator RSS MiB |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for probe in (base, big):
        first = probe["apply_to_first_job_ms"]
        lines.append(
            f"| {probe['runs_present']} | {probe['reconciles']} | {probe['reconcile_ms_mean']} "
            f"| {probe['operator_cpu_ms_per_reconcile']} "
            f"| {probe.get('operator_cpu_ms_per_run', '')} | {first['p50']}/{first['p95']} "
            f"| {probe['operator_rss_mib']} |"
        )
    lines += ["", "## Against the targets", "", "| target | figure | met |", "| --- | --- | --- |"]
    for target, figure, met in targets(results):
        lines.append(f"| {target} | {figure} | {'yes' if met else 'no'} |")
    if before is not None:
        lines += [
            "",
            "## Before and after",
            "",
            f"Before: {before.get('label', 'an earlier run')}. After: "
            f"{results.get('label', 'this run')}. The limits of "
            f"each run: {before['limit']['lifecycle']['jobs_per_second']} and "
            f"{limit['lifecycle']['jobs_per_second']} Jobs/s (Job lifecycle).",
            "",
            *compared(before, results),
        ]
    lines += ["", KEYS, ""]
    return "\n".join(lines)


def chained_limit(limit: dict[str, Any], step_seconds: str) -> list[str]:
    if "chained" not in limit:  # results from before the chained limit was measured
        return []
    chained = limit["chained"]
    lines = [
        f"- Job chains, the Runs' shape with an operator that costs nothing: our own client "
        f"runs {chained['chains']} chains of three {step_seconds} Jobs at once and creates "
        "each chain's next Job when its watch sees the previous one complete: "
        f"**{chained['jobs_per_second']} Jobs/s**.",
    ]
    cpu = chained.get("cpu_ms_per_chain_by_process")
    if cpu:  # results from before these were measured lack them
        lines.append(
            f"  A chain of three Jobs by itself costs {chained['writes_per_chain']} writes "
            f"({', '.join(f'{k} {v}' for k, v in chained['writes_per_chain_by_user'].items())}) "
            "and, in CPU ms: "
            + ", ".join(f"{name} {ms}" for name, ms in cpu.items() if ms >= 0.1)
            + f"; {sum(cpu.values()):.1f} in all."
        )
    return lines


def where_time_and_cpu_go(throughput: dict[str, Any], chained: dict[str, Any]) -> list[str]:
    """A step's stages from our own watches, and CPU per Run of each process (and what it
    adds to the same Jobs run in chains with no operator)."""
    lines = []
    stages = throughput.get("step_stages_ms")
    if stages:
        lines += [
            "",
            f"Where a step's time goes (all {throughput['runs']} Runs at once; our own watches "
            "of the Jobs and their Pods):",
            "",
            "| stage | p50 ms | p95 ms |",
            "| --- | --- | --- |",
            *(f"| {stage} | {v['p50']} | {v['p95']} |" for stage, v in stages.items()),
        ]
    cpu = throughput.get("cpu_ms_per_run_by_process")
    if cpu:
        lines += [
            "",
            "Where the CPU goes, in CPU ms per Run (same scenario): "
            + ", ".join(f"{name} {ms}" for name, ms in cpu.items() if ms >= 0.1)
            + f"; {sum(cpu.values()):.1f} in all.",
        ]
    alone = chained.get("cpu_ms_per_chain_by_process")
    if cpu and alone:
        added = {name: round(ms - alone.get(name, 0.0), 1) for name, ms in cpu.items()}
        lines[-1] += (
            " Beyond what its three Jobs cost in chains with no operator: "
            + ", ".join(f"{name} {ms:+}" for name, ms in added.items() if abs(ms) >= 0.1)
            + f"; {sum(added.values()):+.1f} in all."
        )
    return lines


def ratio(part: float, whole: float) -> str:
    return f"{part / whole:.0%}" if whole else "n/a"


def headline(results: dict[str, Any]) -> list[str]:
    """The summary's first lines: the burst's step Jobs/s against the limits measured in the
    same run, and what a Run costs in API writes (from the audit log)."""
    throughput, limit = results["throughput"], results["limit"]
    jobs = throughput["step_jobs_per_second"]
    lifecycle, api = limit["lifecycle"]["jobs_per_second"], limit["api"]["jobs_per_second"]
    writes, failed = throughput["writes_per_run"], throughput["writes_per_run"]["failed"]

    def listed(counts: dict[str, float]) -> str:
        return ", ".join(f"{k} {v}" for k, v in counts.items() if v >= 0.01) or "none"

    return [
        f"- **Limit ratio: {jobs} step Jobs/s = {ratio(jobs, lifecycle)} of the Job-lifecycle "
        f"limit ({lifecycle} Jobs/s), {ratio(jobs, api)} of the API-write limit ({api} Jobs/s)** "
        f"(all {throughput['runs']} Runs at once; limits measured in this run)"
        + (
            f"; {ratio(jobs, limit['chained']['jobs_per_second'])} of the same control plane "
            f"running chains of three Jobs with no operator ({limit['chained']['jobs_per_second']}"
            " Jobs/s)."
            if "chained" in limit
            else "."
        ),
        f"- **Writes per three-step Run: operator {writes['operator_total']}, whole system "
        f"{writes['system_total']}** (all {throughput['runs']} Runs at once, per finished Run, "
        "successful writes from the API server's audit log; leases not counted).",
        f"- Operator writes per Run: {listed(writes['operator_by_kind'])}; failed: "
        f"{listed(failed['operator_by_kind'])}.",
        f"- By user: {listed(writes['by_user'])}; failed: {listed(failed['by_user'])}.",
        f"- Whole system by verb and resource: {listed(writes['system_by_kind'])}; failed: "
        f"{listed(failed['system_by_kind'])}.",
    ]


def _at_rate(results: dict[str, Any], rate: float) -> dict[str, Any] | None:
    return next((r for r in results["latency"] if r["runs_per_second_target"] == rate), None)


def targets(results: dict[str, Any]) -> list[tuple[str, str, bool]]:
    """Issue 14's targets, each with this run's figure and whether it met it."""
    at20 = _at_rate(results, 20)
    first = at20["apply_to_first_job_ms"]["p95"] if at20 else None
    nxt = at20["step_finished_to_next_job_ms"]["p95"] if at20 else None
    burst = results["throughput"]
    writes = burst["writes_per_run"]
    jobs, lifecycle = (
        burst["step_jobs_per_second"],
        results["limit"]["lifecycle"]["jobs_per_second"],
    )
    finished_per_minute = round(burst["runs_per_second_finished"] * 60)
    scale = results["scale"]
    rss = max(scale["held"]["operator_rss_mib"], scale["at_scale"]["operator_rss_mib"])
    held = scale["held"]["runs"]
    small = scale["baseline"]["operator_cpu_ms_per_reconcile"]
    big = scale["at_scale"]["operator_cpu_ms_per_reconcile"]
    cpu = burst["operator_cpu_ms_per_run"]
    return [
        (
            "≤ 8 operator API writes per three-step Run, ≤ 40 for the whole system",
            f"{writes['operator_total']} / {writes['system_total']}",
            writes["operator_total"] <= 8 and writes["system_total"] <= 40,
        ),
        (
            "apply→first Job and step done→next Job p95 ≤ 100 ms at 20 Runs/s",
            f"{first} ms and {nxt} ms",
            first is not None and nxt is not None and max(first, nxt) <= 100,
        ),
        (
            "≥ 13.5 finished Runs/s (810 a minute) and ≥ 80 % of the limit in step Jobs/s",
            f"{finished_per_minute} Runs a minute; {jobs} Jobs/s = {ratio(jobs, lifecycle)} of "
            "the Job-lifecycle limit"
            + (
                f", {ratio(jobs, chained)} of the Job-chain limit"
                if (chained := results["limit"].get("chained", {}).get("jobs_per_second"))
                else ""
            ),
            burst["runs_per_second_finished"] >= 13.5 and jobs >= 0.8 * lifecycle,
        ),
        (
            "≤ 250 MiB resident with 10,000 Runs held",
            f"{rss} MiB with {held} Runs held",
            held >= 10_000 and rss <= 250,
        ),
        (
            "flat CPU per reconcile from few to many Runs",
            f"{small} → {big} CPU ms per reconcile "
            f"({scale['baseline']['runs_present']} → {scale['at_scale']['runs_present']} Runs)"
            + (
                f"; per probe Run {per_run_small} → {per_run_big}"
                if (per_run_small := scale["baseline"].get("operator_cpu_ms_per_run"))
                and (per_run_big := scale["at_scale"].get("operator_cpu_ms_per_run"))
                else ""
            ),
            big <= 1.25 * small,
        ),
        ("operator CPU per three-step Run ≤ 25 ms", f"{cpu} ms", cpu <= 25),
    ]


# The figures set side by side with an earlier run: name, and how to read it from results.
FIGURES: list[tuple[str, Callable[[dict[str, Any]], Any]]] = [
    ("operator API writes per Run (all at once)",
     lambda r: r["throughput"]["writes_per_run"]["operator_total"]),
    ("of which runs/status patches",
     lambda r: r["throughput"]["writes_per_run"]["operator_by_kind"].get("patch runs/status")),
    ("whole system API writes per Run",
     lambda r: r["throughput"]["writes_per_run"]["system_total"]),
    ("operator API writes per Run at 5 Runs/s",
     lambda r: (_at_rate(r, 5) or {}).get("writes_per_run", {}).get("operator_total")),
    ("apply→first Job p95 ms at 5 Runs/s",
     lambda r: (_at_rate(r, 5) or {}).get("apply_to_first_job_ms", {}).get("p95")),
    ("apply→first Job p95 ms at 20 Runs/s",
     lambda r: (_at_rate(r, 20) or {}).get("apply_to_first_job_ms", {}).get("p95")),
    ("step done→next Job p95 ms at 20 Runs/s",
     lambda r: (_at_rate(r, 20) or {}).get("step_finished_to_next_job_ms", {}).get("p95")),
    ("step Jobs/s, all at once", lambda r: r["throughput"]["step_jobs_per_second"]),
    ("share of the Job-lifecycle limit", lambda r: ratio(
        r["throughput"]["step_jobs_per_second"], r["limit"]["lifecycle"]["jobs_per_second"])),
    ("operator CPU ms per Run (all at once)", lambda r: r["throughput"]["operator_cpu_ms_per_run"]),
    ("reconciles per Run (all at once)", lambda r: r["throughput"]["reconciles_per_run"]),
    ("events the mirror stored per Run (all at once)",
     lambda r: round(r["throughput"]["mirror_events"] / r["throughput"]["runs"], 2)),
    ("mirror lag p95 ms (all at once)", lambda r: r["throughput"]["mirror_lag_ms"]["p95"]),
    ("Runs held", lambda r: r["scale"]["held"]["runs"]),
    ("operator RSS MiB, Runs held", lambda r: r["scale"]["held"]["operator_rss_mib"]),
    ("operator CPU ms per reconcile, many Runs present",
     lambda r: r["scale"]["at_scale"]["operator_cpu_ms_per_reconcile"]),
]  # fmt: skip


def compared(before: dict[str, Any], after: dict[str, Any]) -> list[str]:
    """A table of the main figures of an earlier run beside this one's."""
    lines = ["| figure | before | after |", "| --- | --- | --- |"]
    for name, read in FIGURES:
        lines.append(f"| {name} | {_read(read, before)} | {_read(read, after)} |")
    return lines


def _read(read: Callable[[dict[str, Any]], Any], results: dict[str, Any]) -> Any:
    try:
        value = read(results)
    except (KeyError, TypeError, ZeroDivisionError):
        return "n/a"  # an older results.json without this figure
    return "n/a" if value is None else value


KEYS = """Keys of results.json (times in ms as n/p50/p95/p99 unless noted): `machine` (where it
ran); `label` (what the run measured, from --label); `step_seconds` (each step Pod's lifetime);
`limit.api` (jobs, seconds, jobs_per_second, api_writes_per_second: a tight client creating
Jobs and patching their status);
`limit.lifecycle` (jobs, completed, seconds, jobs_per_second: Jobs run to completion with no
operator); `latency` (one entry per target rate) and `throughput` (all Runs at once), each with
runs_per_second_target (null for throughput), runs, succeeded, runs_per_second_applied,
runs_per_second_finished (all Runs, from the first apply to the last finish),
step_jobs_per_second (sustained: Jobs finished between the 10th and 90th percentile of their
finish times), wall_seconds, apply_to_first_job_ms, step_finished_to_next_job_ms,
apply_to_succeeded_ms, reconciles_per_run, operator_cpu_seconds, operator_cpu_ms_per_run,
operator_rss_mib, api_requests_per_run (every API request of the whole system per Run, by verb
and resource), writes_per_run (from the API server's audit log: writes to objects in the
scenario's namespace per finished Run; operator_total, system_total, by_user,
operator_by_kind and system_by_kind as "verb resource[/subresource]"; `failed` the same for
responses ≥ 400, keyed with the code; outside_namespace: writes elsewhere meanwhile, not per
Run; leases are not logged), mirror_events, mirror_events_per_second, mirror_lag_ms
(p50/p95/p99 from the operator's histogram); `scale.held` (runs, applied_seconds, settled_seconds,
operator_cpu_seconds_to_settle, operator_cpu_percent_idle, operator_rss_mib: Runs kept waiting
for approval); `scale.baseline` and `scale.at_scale` (runs_present, reconciles,
reconcile_ms_mean, operator_cpu_ms_per_reconcile, operator_cpu_ms_per_run,
apply_to_first_job_ms, operator_rss_mib: a probe of Runs applied slowly with few and with many
Runs present)."""


def plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = results["latency"]
    rates = [row["runs_per_second_applied"] for row in rows]
    figure, axis = plt.subplots(figsize=(7, 4))
    for key, label in (
        ("apply_to_first_job_ms", "apply → first Job"),
        ("step_finished_to_next_job_ms", "step done → next Job"),
    ):
        for quantile, style in (("p50", "-o"), ("p95", "--o")):
            axis.plot(rates, [row[key][quantile] for row in rows], style,
                      label=f"{label} {quantile}")  # fmt: skip
    axis.axhline(100, color="grey", linewidth=0.8, linestyle=":", label="target p95")
    axis.set_xlabel("Runs applied per second")
    axis.set_ylabel("milliseconds")
    axis.set_yscale("log")
    axis.set_title(f"NOFX operator latency ({results['machine']['cores']} cores)")
    axis.legend(fontsize=8)
    axis.grid(True, alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
