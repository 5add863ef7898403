"""The only part of the operator that talks to Kubernetes and hands work to the mirror.

watched.py is what the operator's own watches hold (run_watch.py, step_jobs.py, specs.py), and
agents.py and templates.py handle their changes; schedules.py and workloads.py are wired to Kopf;
run_reconciler.py is the Run reconciler (a work queue, then per pass: observe.py gathers,
nofx.planner decides, apply.py carries it out); context.py is what the handlers share, kept on
Kopf's memo; errors.py tells outages from faults; waiters.py and status_patch.py are helpers."""
