"""The planner: what should happen next for a Run, as plain functions over plain data.

`decide(run, world) → Decision` is the entry point (decide.py). Around it, one module per
concern: facts (what it reads and returns), pinning (before the start), graph (step order),
state (one pass over a started Run), progress (moving steps forward), attempts (Jobs and
retries), fanout (forEach), children (child Runs), billing, outputs, stopping (cancel, timeout,
abort), lifetime (TTL), conditions, naming, templating and validation. It imports only the API
types; only the reconcilers talk to Kubernetes or Postgres.
"""
