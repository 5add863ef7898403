"""What the Run page shows besides its DAG: its attempts as Gantt bars, its steps as table rows
and its approval gates; pure functions of the Run and its Jobs (one Job per step attempt, see
nofx.builders.job)."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from nofx.builders.labels import ATTEMPT_LABEL, INDEX_LABEL, STEP_LABEL

MIN_WIDTH = 0.5  # percent: an attempt of no measurable length still shows


@dataclass(frozen=True)
class Bar:
    label: str  # step[index] #attempt
    outcome: str
    start: datetime
    seconds: float
    offset: float  # percent of the timeline
    width: float  # percent of the timeline


Span = tuple[str, str, datetime, datetime]  # label, outcome, start, end


def parse_time(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value.replace("Z", "+00:00")) if value else None


def _attempt(job: Mapping[str, Any], now: datetime) -> Span | None:
    """(label, outcome, start, end) of a Job that started; a running one ends now."""
    labels = job["metadata"].get("labels") or {}
    status = job.get("status") or {}
    start = parse_time(status.get("startTime"))
    if start is None:
        return None
    index = labels.get(INDEX_LABEL)
    label = labels.get(STEP_LABEL, "?") + (f"[{index}]" if index is not None else "")
    label += f" #{labels.get(ATTEMPT_LABEL, '?')}"
    outcome, end = "Running", now
    for condition in status.get("conditions") or []:
        if condition.get("status") == "True" and condition.get("type") in ("Complete", "Failed"):
            outcome = "Succeeded" if condition["type"] == "Complete" else "Failed"
            end = parse_time(condition.get("lastTransitionTime")) or now
    end = parse_time(status.get("completionTime")) or end
    return label, outcome, start, max(end, start)


def _child_run_steps(run: Mapping[str, Any], now: datetime) -> list[Span]:
    """Steps that start a child Run have no Job: their own times stand for their attempt."""
    rows = []
    for entry in (run.get("status") or {}).get("steps") or []:
        start = parse_time(entry.get("startedAt"))
        if entry.get("childRunName") and start is not None:
            end = parse_time(entry.get("finishedAt")) or now
            rows.append((f"{entry['name']} (child Run)", entry.get("phase", "Running"), start, end))
    return rows


def gantt(run: Mapping[str, Any], jobs: Sequence[Mapping[str, Any]], now: datetime) -> list[Bar]:
    """One bar per attempt, placed on a common time axis, in the order they started."""
    attempts = [a for a in (_attempt(job, now) for job in jobs) if a is not None]
    attempts += _child_run_steps(run, now)
    if not attempts:
        return []
    attempts.sort(key=lambda a: (a[2], a[0]))
    first = attempts[0][2]
    span = max((end - first).total_seconds() for *_, end in attempts) or 1.0
    bars = []
    for label, outcome, start, end in attempts:
        offset = (start - first).total_seconds() / span * 100
        width = max((end - start).total_seconds() / span * 100, MIN_WIDTH)
        bars.append(
            Bar(
                label=label,
                outcome=outcome,
                start=start,
                seconds=(end - start).total_seconds(),
                offset=round(min(offset, 100 - MIN_WIDTH), 2),
                width=round(min(width, 100 - offset), 2) or MIN_WIDTH,
            )
        )
    return bars


@dataclass(frozen=True)
class StepRow:
    anchor: str  # the id the DAG's nodes link to
    name: str
    phase: str
    reason: str
    attempts: int
    started: datetime | None
    finished: datetime | None
    message: str
    inputs: str  # JSON: as the latest attempt got them, else as the plan writes them
    outputs: str  # JSON, or ''
    child_run: str


def step_anchor(name: str) -> str:
    return f"step-{name}"


def step_rows(
    run: Mapping[str, Any],
    plan_steps: Sequence[Mapping[str, Any]],
    jobs: Sequence[Mapping[str, Any]],
) -> list[StepRow]:
    planned = {step["name"]: step for step in plan_steps}
    rendered = _rendered_inputs(jobs)
    rows, anchored = [], set()
    for entry in (run.get("status") or {}).get("steps") or []:
        name, index = entry["name"], entry.get("index")
        inputs = rendered.get((name, index))
        if inputs is None:
            inputs = (planned.get(name) or {}).get("inputs") or {}
        rows.append(
            StepRow(
                anchor="" if name in anchored else step_anchor(name),
                name=name + (f"[{index}]" if index is not None else ""),
                phase=entry.get("phase", "Pending"),
                reason=entry.get("reason") or "",
                attempts=entry.get("attempts") or 0,
                started=parse_time(entry.get("startedAt")),
                finished=parse_time(entry.get("finishedAt")),
                message=entry.get("message") or "",
                inputs=_json(inputs),
                outputs=_json(entry["outputs"]) if entry.get("outputs") else "",
                child_run=entry.get("childRunName") or "",
            )
        )
        anchored.add(name)
    return rows


def _rendered_inputs(jobs: Sequence[Mapping[str, Any]]) -> dict[tuple[str, int | None], Any]:
    """NOFX_INPUTS of the latest attempt of each step (and forEach item)."""
    latest: dict[tuple[str, int | None], tuple[int, Any]] = {}
    for job in jobs:
        labels = job["metadata"].get("labels") or {}
        index = labels.get(INDEX_LABEL)
        key = (labels.get(STEP_LABEL, ""), int(index) if index is not None else None)
        attempt = int(labels.get(ATTEMPT_LABEL, "0"))
        containers = job["spec"]["template"]["spec"].get("containers") or []
        env = {e["name"]: e.get("value") for c in containers for e in c.get("env") or []}
        if "NOFX_INPUTS" in env and attempt >= latest.get(key, (-1, None))[0]:
            latest[key] = (attempt, json.loads(env["NOFX_INPUTS"] or "{}"))
    return {key: inputs for key, (_, inputs) in latest.items()}


def _json(value: Any) -> str:
    return json.dumps(value, indent=1, sort_keys=True) if value not in (None, {}, []) else ""


@dataclass(frozen=True)
class Gate:
    step: str
    asks: str  # what the approver should check
    approved_by: str  # '' while it waits
    message: str


def approval_gates(run: Mapping[str, Any], plan_steps: Sequence[Mapping[str, Any]]) -> list[Gate]:
    """Every step with an approval gate, and who approved it (as the API server knew them)."""
    approvals = {a["step"]: a for a in (run.get("spec") or {}).get("approvals") or []}
    gates = []
    for step in plan_steps:
        gate = step.get("approval") or {}
        if step.get("approval") is None or gate.get("required") is False:
            continue
        approval = approvals.get(step["name"]) or {}
        gates.append(
            Gate(
                step=step["name"],
                asks=gate.get("message") or "",
                approved_by=approval.get("approvedBy") or "",
                message=approval.get("message") or "",
            )
        )
    return gates
