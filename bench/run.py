"""`make bench`: the operator's latency, throughput and cost on the real local control plane.

Pods run on kwok with a short fixed lifetime, so the figures show what the operator (and the
control plane) cost, not what agents do. Writes bench/results.json, bench/summary.md and
bench/latency.png, each with the machine it ran on. Figures are measured from the outside: a
watch of our own sees Runs and Jobs appear and finish, with this process's clock.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

import report
from limits import chained_limit, lifecycle_limit, limit
from measure import machine
from scenarios import STEP_SECONDS, fill, latency, probe, throughput
from system import Bench

HERE = Path(__file__).resolve().parent


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rates", default="5,20,50", help="Runs/s to apply, comma separated")
    parser.add_argument("--seconds", type=float, default=10.0, help="how long each rate lasts")
    parser.add_argument("--throughput-runs", type=int, default=300)
    parser.add_argument("--scale-runs", type=int, default=10_000)
    parser.add_argument("--probe-runs", type=int, default=100)
    parser.add_argument("--limit-jobs", type=int, default=600)
    parser.add_argument("--out", type=Path, default=HERE, help="where the results go")
    parser.add_argument(
        "--before",
        type=Path,
        help="an earlier results.json: the summary sets its main figures beside this run's",
    )
    parser.add_argument("--label", help="what this run measured (kept in results.json)")
    parser.add_argument(
        "--profile",
        action="store_true",
        help="sample the operator with py-spy during the throughput scenario "
        "(writes profile.txt: collapsed stacks, as flamegraph tools read them) and profile "
        "the API server for 20 s of it (apiserver.pprof, for go tool pprof)",
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="nofx-bench-") as state_dir:
        bench = Bench(Path(state_dir), profiling=args.profile)
        try:
            bench.start()
            results: dict[str, Any] = {"machine": machine(), "step_seconds": STEP_SECONDS}
            if args.label:
                results["label"] = args.label

            def step(name: str, value: Any) -> Any:
                print(f"{name}: {json.dumps(value)}", flush=True)
                return value

            # First, while the cluster holds nothing else.
            baseline = step("baseline", probe(bench, "bench-probe-few", args.probe_runs, 5))
            results["latency"] = [
                step(f"{rate} Runs/s", latency(bench, rate, args.seconds))
                for rate in (float(r) for r in args.rates.split(","))
            ]
            with bench.profiled(args.out if args.profile else None):
                results["throughput"] = step("throughput", throughput(bench, args.throughput_runs))
            lifecycle = step("lifecycle limit", lifecycle_limit(bench, args.limit_jobs))
            chained = step("chained limit", chained_limit(bench, args.throughput_runs))
            held = step("held", fill(bench, args.scale_runs))
            at_scale = step("at scale", probe(bench, "bench-probe-many", args.probe_runs, 5))
            results["scale"] = {"baseline": baseline, "held": held, "at_scale": at_scale}
            # Last: its long-lived Jobs would otherwise load the controllers during the others.
            api = step("api limit", limit(bench, args.limit_jobs))
            results["limit"] = {"api": api, "lifecycle": lifecycle, "chained": chained}
        finally:
            bench.stop()
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    before = json.loads(args.before.read_text()) if args.before else None
    (args.out / "summary.md").write_text(report.summary(results, before))
    report.plot(results, args.out / "latency.png")
    print((args.out / "summary.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
