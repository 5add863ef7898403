"""A plain step (or one forEach item): start an attempt as a Job, read how it ended, retry with
backoff, give up; and watch a Job that cannot create its Pod."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from nofx.api.common import parse_duration
from nofx.api.reasons import TERMINAL_STEP_REASONS, Reason
from nofx.api.run import StepStatus
from nofx.api.template import Step
from nofx.changes import TokensUsed
from nofx.planner import billing, budget, caching, templating, tokens
from nofx.planner.conditions import bounded
from nofx.planner.facts import JobObservation, JobRequest
from nofx.planner.naming import job_name
from nofx.planner.outputs import outcome
from nofx.planner.pinning import agent_for
from nofx.planner.state import RunState

# A Job without a Pod this long is asked why (the Job controller's FailedCreate Events); one
# that still has none, with an error, Limits.pod_create_timeout after its creation fails the
# attempt. Not sooner: on a busy control plane a Pod often takes a few seconds to come, and
# each look before it did cost a reconcile that found nothing (at 5 s, one per step Job when
# 150 Runs started at once).
POD_START_CHECK = timedelta(seconds=10)
MINUTE = timedelta(minutes=1)
# Kueue makes a Workload for a queued Job within a second; none after this long is news.
NO_WORKLOAD = timedelta(seconds=30)


def start_attempt(
    state: RunState, step: Step, entry: StepStatus, context: dict[str, Any], item: Any = None
) -> None:
    if state.run.spec.suspend:
        state.wait(entry, "the Run is suspended", Reason.SUSPENDED)
        return
    if budget.exceeded(state):
        return  # the Run stops at the end of this pass (budget.enforce)
    if step.cache is not None and not entry.attempts:
        try:
            rendered = render_inputs(step, context)
        except templating.TemplateError as error:
            state.end(entry, "Failed", f"inputs: {error}")
            return
        if caching.look_up(state, step, entry, rendered) != caching.Lookup.MISS:
            return  # reused (no Job, no cost), or waiting for the answer
    agent_name = agent_for(step, state.agents)
    assert agent_name is not None, "pinning chose an agent for every step"
    agent = state.agents[agent_name]
    if agent_name in state.free_slots:
        if state.free_slots[agent_name] <= 0:
            state.decision.waiting_for.add(("AgentSlot", agent_name))
            limit = agent.max_concurrent_steps
            message = f"waiting for a free slot of Agent {agent_name} (maxConcurrentSteps {limit})"
            state.wait(entry, message, Reason.WAITING_FOR_SLOT)
            return
        state.free_slots[agent_name] -= 1
    try:
        inputs = render_inputs(step, context)
    except templating.TemplateError as error:
        state.end(entry, "Failed", f"inputs: {error}")
        return
    attempt = (entry.attempts or 0) + 1
    name = job_name(state.run.name, state.run.uid, step.name, entry.index, attempt)
    queue = state.status.queue_name
    # A Job seen already was created before a crash that kept this status from being
    # written: it is this attempt, to be read (below), not created again.
    if name not in state.world.jobs:
        state.decision.create_jobs.append(
            JobRequest(
                step=step.name,
                index=entry.index,
                attempt=attempt,
                agent_name=agent_name,
                agent=agent,
                inputs=inputs,
                item=item,
                timeout_seconds=timeout_seconds(step.timeout),
                job_name=name,
                queue_name=queue,
            )
        )
    entry.attempts = attempt
    entry.job_name = name
    entry.started_at = entry.started_at or state.now
    entry.next_attempt_at = None
    if queue:
        # Kueue's Workload events tell when it is admitted, or why not.
        entry.phase, entry.reason = "Queued", Reason.QUEUED
        entry.message = f"attempt {attempt} queued in LocalQueue {queue} as Job {name}"
    else:
        # A look at the Job soon: one that cannot create its Pod sends no event that says so.
        state.decision.wake_no_later_than(state.now + POD_START_CHECK)
        entry.phase, entry.reason = "Running", None
        entry.message = f"attempt {attempt} running as Job {name}"
    if name in state.world.jobs:
        advance_attempt(state, step, entry, context, item)  # it may have finished already


def advance_attempt(
    state: RunState, step: Step, entry: StepStatus, context: dict[str, Any], item: Any = None
) -> None:
    if entry.phase == "Waiting":
        if entry.next_attempt_at is not None and state.now < entry.next_attempt_at:
            state.decision.wake_no_later_than(entry.next_attempt_at)
            return
        start_attempt(state, step, entry, context, item)
        return
    observation = state.world.jobs.get(entry.job_name or "")
    if observation is None:
        return
    attempt = entry.attempts or 0
    if observation.queued:
        _queued(state, entry, observation)
        return
    if entry.phase == "Queued":  # admitted since the last look (and maybe finished already)
        _admitted(state, entry, observation)
    if observation.state == "Active":
        failure = _pod_start_failure(state, entry, observation)
        if failure is None:
            return
        outputs: dict[str, Any] = {}
        reason: Reason | None = Reason.POD_CREATE_FAILED
        state.decision.delete_jobs.append(observation.name)  # else it keeps trying
    else:
        outputs, failure, reason = outcome(observation, step.timeout)
    used: list[TokensUsed] = []
    if failure is None:
        try:
            outputs, used = _reported_tokens(state, step, outputs)
        except tokens.UsageProblem as problem:
            outputs, failure, reason = {}, problem.message, problem.reason
    outcome_phase = "Succeeded" if failure is None else "Failed"
    cache_key = _cache_key(state, step, context) if failure is None else None
    billing.meter(state, step, entry, observation, outcome_phase, used, cache_key, outputs)
    if failure is None:
        entry.outputs = outputs
        state.end(entry, "Succeeded", f"attempt {attempt} succeeded")
        return
    limit = step.retries.limit if step.retries else 0
    if attempt <= limit and reason not in TERMINAL_STEP_REASONS:
        assert step.retries is not None
        backoff = step.retries.backoff
        # Capped in seconds before it becomes a timedelta, which a large power would overflow.
        grown = parse_duration(backoff.duration).total_seconds() * backoff.factor ** (attempt - 1)
        delay = timedelta(seconds=min(grown, parse_duration(backoff.max_duration).total_seconds()))
        entry.phase = "Waiting"
        entry.reason = Reason.RETRY_BACKOFF
        entry.next_attempt_at = state.now + delay
        entry.message = bounded(
            f"attempt {attempt} failed: {failure}; retry {attempt} of {limit} "
            f"in {delay.total_seconds():g}s"
        )
        state.decision.wake_no_later_than(entry.next_attempt_at)
        return
    tries = f" after {attempt} attempts" if attempt > 1 else ""
    state.end(entry, "Failed", f"{failure}{tries}", reason)


def render_inputs(step: Step, context: dict[str, Any]) -> dict[str, Any]:
    return {key: templating.render(value, context) for key, value in (step.inputs or {}).items()}


def _cache_key(state: RunState, step: Step, context: dict[str, Any]) -> str | None:
    """The key under which a cached step's successful attempt is stored (the inputs render
    as they did when it started: upstream outputs never change)."""
    if step.cache is None:
        return None
    try:
        return caching.key_of(state, step, render_inputs(step, context))
    except templating.TemplateError:
        return None


def _reported_tokens(
    state: RunState, step: Step, outputs: dict[str, Any]
) -> tuple[dict[str, Any], list[TokensUsed]]:
    """The outputs without nofx.usage, and its tokens priced by the step's Agent."""
    outputs, usage = tokens.take_usage(outputs)
    agent_name = agent_for(step, state.agents) or ""
    agent = state.agents.get(agent_name)
    return outputs, tokens.price(usage, agent.pricing if agent else None, agent_name)


def _queued(state: RunState, entry: StepStatus, job: JobObservation) -> None:
    """A suspended Job of a queue: not admitted yet, or evicted; Kueue's Workload says why.
    Without a Workload for long, Kueue is not there (or does not manage Jobs): say so."""
    admission = job.admission
    entry.phase = "Queued"
    entry.reason = Reason.QUEUED
    why = "waiting for Kueue's Workload"
    if admission is None and job.created_at is not None:
        if state.now - job.created_at >= NO_WORKLOAD:
            why = (
                f"Kueue made no Workload for it in {NO_WORKLOAD.total_seconds():.0f}s: is Kueue "
                "running, and does it manage batch/job?"
            )
        else:
            state.decision.wake_no_later_than(job.created_at + NO_WORKLOAD)
    if admission is not None:
        if admission.evicted:
            entry.reason = Reason.EVICTED
        elif admission.reason == "Inadmissible":  # its LocalQueue or ClusterQueue is missing
            entry.reason = Reason.QUEUE_INADMISSIBLE
        why = admission.message or admission.reason or "waiting for admission"
    if entry.reason == Reason.EVICTED:
        text = f"attempt {entry.attempts} evicted by Kueue, queued again in LocalQueue"
    else:
        text = f"attempt {entry.attempts} queued in LocalQueue"
    entry.message = bounded(f"{text} {job.queue_name} as Job {job.name}: {why}")


def _admitted(state: RunState, entry: StepStatus, job: JobObservation) -> None:
    first = entry.reason != Reason.EVICTED
    admitted_at = (job.admission.admitted_at if job.admission else None) or job.started_at
    if first and job.created_at is not None and admitted_at is not None:
        wait = (admitted_at - job.created_at).total_seconds()
        state.decision.queue_waits.append(max(0.0, wait))
    entry.phase, entry.reason = "Running", None
    by = job.admission.cluster_queue if job.admission else None
    admitted = f", admitted by ClusterQueue {by}" if by else ""
    entry.message = f"attempt {entry.attempts} running as Job {job.name}{admitted}"


def _pod_clock_start(job: JobObservation) -> datetime | None:
    """Since when a Job should have had its Pod: its creation, or for a queued Job its
    admission (the Job controller resets startTime when it resumes a suspended Job)."""
    return job.started_at if job.queue_name else job.created_at


def _pod_start_failure(state: RunState, entry: StepStatus, job: JobObservation) -> str | None:
    """Watches a Job that has no Pod yet: says why in the step's message, and gives up
    (returns why) once it had an error for too long."""
    since = _pod_clock_start(job)
    if job.pods_started:
        return None
    if since is None:
        if job.queue_name:  # just admitted: the Job controller has not resumed it yet
            state.decision.wake_no_later_than(state.now + POD_START_CHECK)
        return None
    age = state.now - since
    if age < POD_START_CHECK:
        state.decision.wake_no_later_than(since + POD_START_CHECK)
        return None
    if job.pod_create_error is None:
        # Only slow (a busy Job controller or scheduler): look again, less and less often.
        state.decision.wake_no_later_than(state.now + min(max(age / 2, POD_START_CHECK), MINUTE))
        return None
    problem = f"Job {job.name} cannot create its Pod: {job.pod_create_error}"
    timeout = state.world.limits.pod_create_timeout
    if age >= timeout:
        return f"{problem} (for {age.total_seconds():.0f}s)"
    entry.message = bounded(f"attempt {entry.attempts} waits: {problem}")
    state.decision.wake_no_later_than(since + timeout)
    return None


def timeout_seconds(duration: str | None) -> int | None:
    if not duration:
        return None
    return max(1, round(parse_duration(duration).total_seconds()))
