"""Before the start: pin the account, resolve the plan, its parameters and its Agents once, check
what only the whole plan can tell (cycles of child Runs, the worst-case status), and pin the
snapshot."""

from __future__ import annotations

from collections.abc import Mapping

from nofx.api.accounts import ACCOUNT_LABEL
from nofx.api.agent import AgentSpec
from nofx.api.common import READY, SUCCEEDED
from nofx.api.pinned import Pinned, PinnedAgent, PinnedTemplate
from nofx.api.queues import NAMESPACE_QUEUE_LABEL
from nofx.api.reasons import Reason
from nofx.api.run import RunStatus, StepStatus
from nofx.api.template import Step, TemplateSpec
from nofx.api.usage import Usage
from nofx.planner import budget, validation
from nofx.planner.conditions import finish, pending, set_condition
from nofx.planner.facts import Decision, RunView, World
from nofx.planner.outputs import MAX_OUTPUT_BYTES

# What the steps of a plan may add to a Run's status at most: etcd refuses objects over 1.5 MiB,
# and the spec, the pinned plan and metadata need room too.
MAX_STATUS_STEP_ENTRIES = 1000  # status.steps maxItems
MAX_STATUS_STEP_BYTES = 1024 * 1024
STEP_ENTRY_OVERHEAD = 512  # name, phase, times, job name and a short message of one entry


def pin_account(run: RunView, world: World, decision: Decision) -> bool:
    """Pins the account the Run is billed to, once: its namespace's. A spec.account naming
    another (the nofx-accounts admission policy refuses it; without the policy only this
    stops it) fails the Run. Returns whether the Run may go on."""
    status, wanted = decision.status, run.spec.account
    if status.pinned is not None:
        status.account = wanted or "default"  # started before accounts were pinned: as it was
        return True
    if world.namespace_account is None:
        raise ValueError("the namespace's account is needed to pin the Run's account")
    if wanted is not None and wanted != world.namespace_account:
        message = (
            f"spec.account {wanted!r} is not the account of namespace {run.namespace} "
            f"({world.namespace_account!r}, from its label {ACCOUNT_LABEL} or else its name): "
            "a Run is billed to its namespace's account; leave spec.account out"
        )
        finish(status, world.now, "Failed", Reason.ACCOUNT_MISMATCH, message)
        set_condition(status, READY, "False", Reason.ACCOUNT_MISMATCH, message, world.now)
        return False
    status.account = world.namespace_account
    return True


def pin(run: RunView, world: World, decision: Decision) -> bool:
    """Resolves the plan, its parameters and its Agents once; the snapshot is all a Run ever
    runs with. Returns whether the Run could start."""
    status, spec = decision.status, run.spec
    if budget.account_spent(status, world, decision):
        return False
    template_name = spec.template_ref.name if spec.template_ref else None
    plan = spec.inline_template() if template_name is None else world.template
    if plan is None:
        decision.waiting_for.add(("Template", str(template_name)))
        if world.template_invalid:
            message = f"Template {template_name} is invalid (see its Ready condition)"
            pending(status, world.now, Reason.TEMPLATE_INVALID, message)
        else:
            message = f"Template {template_name} not found"
            pending(status, world.now, Reason.TEMPLATE_MISSING, message)
        return False
    if spec.timeout:
        plan = plan.model_copy(update={"timeout": spec.timeout})
    if spec.budget:
        plan = plan.model_copy(update={"budget": spec.budget})

    where = "spec.parameters" if template_name else "spec.parameterDefinitions"
    problems = validation.validate_plan(plan, where)
    parameters, parameter_problems = validation.resolve_parameters(
        plan.parameters or [], spec.parameters or {}
    )
    problems += parameter_problems + status_bound_problems(plan)
    cycle = template_cycle(template_name, plan, world.templates)
    if cycle:
        problems.append(f"child Runs would start each other without end: {' → '.join(cycle)}")
    if problems:
        _cannot_run(status, world, problems)
        return False
    unavailable = _cache_unavailable(plan, world)
    if unavailable is not None:
        finish(status, world.now, "Failed", Reason.CACHE_UNAVAILABLE, unavailable)
        set_condition(status, READY, "False", Reason.CACHE_UNAVAILABLE, unavailable, world.now)
        return False

    for child_template, step_name in child_templates(plan).items():
        if child_template not in world.templates or world.templates[child_template] is None:
            decision.waiting_for.add(("Template", child_template))
            state = "invalid" if child_template in world.templates else "not found"
            reason = Reason.TEMPLATE_INVALID if state == "invalid" else Reason.TEMPLATE_MISSING
            message = f"Template {child_template} of step {step_name} (childRun) {state}"
            pending(status, world.now, reason, message)
            return False

    chosen, missing = _choose_agents(plan, world.agents)
    if missing:
        for name in missing:
            decision.waiting_for.add(("Agent", name))
        pending(status, world.now, Reason.AGENT_MISSING, "; ".join(missing.values()))
        return False
    problems = budget.currency_problems(plan.budget, chosen)
    if problems:
        _cannot_run(status, world, problems)
        return False
    queue = spec.queue_name or plan.queue_name or world.namespace_queue
    if queue and not world.limits.kueue:
        source = (
            "spec.queueName"
            if spec.queue_name
            else "the Template's queueName"
            if plan.queue_name
            else f"the namespace's label {NAMESPACE_QUEUE_LABEL}"
        )
        message = (
            f"{source} names the Kueue LocalQueue {queue}, but the operator runs without Kueue: "
            "start it with --kueue (Helm: kueue.enabled), or name no queue"
        )
        pending(status, world.now, Reason.QUEUEING_DISABLED, message)
        return False

    status.pinned = Pinned(
        template=PinnedTemplate(
            name=template_name, spec_hash=validation.spec_hash(plan.to_dict()), spec=plan.to_dict()
        ),
        agents={
            name: PinnedAgent(spec_hash=validation.spec_hash(agent.to_dict()), spec=agent.to_dict())
            for name, agent in sorted(chosen.items())
        }
        or None,
        parameters=parameters or None,
    )
    status.queue_name = queue
    status.started_at = world.now
    status.phase = "Running"
    status.message = None
    status.steps = [
        StepStatus(name=step.name, phase="Pending")
        for step in [*plan.steps, *(plan.finally_ or [])]
    ]
    status.usage = Usage()
    set_condition(status, READY, "True", "Started", "template and agents pinned", world.now)
    set_condition(status, SUCCEEDED, "Unknown", "Running", "the Run is running", world.now)
    return True


def _cache_unavailable(plan: TemplateSpec, world: World) -> str | None:
    """Why a plan with cached steps cannot run here: only the mirror's Postgres keeps the cache
    (a Run fails at once rather than run its steps uncached and cost what it asked to save)."""
    cached = [s.name for s in [*plan.steps, *(plan.finally_ or [])] if s.cache is not None]
    if not cached or world.cache_enabled:
        return None
    return (
        f"step {', '.join(cached)} sets cache, but the operator has no Postgres mirror "
        "(--database-url) to keep cached results in: remove cache or configure the mirror"
    )


def _cannot_run(status: RunStatus, world: World, problems: list[str]) -> None:
    message = "; ".join(problems)
    finish(status, world.now, "Failed", Reason.INVALID_PLAN, message)
    set_condition(status, READY, "False", Reason.INVALID_PLAN, message, world.now)


def child_templates(plan: TemplateSpec) -> dict[str, str]:
    """Templates the plan starts as child Runs → the first step that starts each."""
    found: dict[str, str] = {}
    for step in [*plan.steps, *(plan.finally_ or [])]:
        if step.child_run is not None:
            found.setdefault(step.child_run.template_ref.name, step.name)
    return found


def template_cycle(
    name: str | None, plan: TemplateSpec, templates: Mapping[str, TemplateSpec | None]
) -> list[str] | None:
    """A chain of Templates that start each other as child Runs, from this plan back to a
    Template already on the chain; None if there is none. Templates that do not exist yet
    end a chain (they are waited for)."""
    start = name or "(inline plan)"
    finished: set[str] = set()
    # Depth-first without recursion: (template, its children not yet visited).
    path: list[tuple[str, list[str]]] = [(start, sorted(child_templates(plan)))]
    while path:
        current, children = path[-1]
        if not children:
            finished.add(current)
            path.pop()
            continue
        child = children.pop()
        on_path = [entry[0] for entry in path]
        if child in on_path:
            return [*on_path[on_path.index(child) :], child]
        spec = templates.get(child)
        if child not in finished and spec is not None:
            path.append((child, sorted(child_templates(spec))))
    return None


def status_bound_problems(plan: TemplateSpec) -> list[str]:
    """What a plan could write into a Run's status at worst, against what a status holds."""
    entries = size = 0
    for step in [*plan.steps, *(plan.finally_ or [])]:
        items = validation.MAX_FOR_EACH_ITEMS if step.for_each else 0
        entries += 1 + items
        # Every entry may report full outputs; a forEach step's own entry joins its items'.
        size += (1 + items) * (STEP_ENTRY_OVERHEAD + MAX_OUTPUT_BYTES) + items * MAX_OUTPUT_BYTES
        # A cached step's outputs wait in the audit outbox too, until the mirror stored them.
        size += MAX_OUTPUT_BYTES if step.cache is not None else 0
    problems = []
    if entries > MAX_STATUS_STEP_ENTRIES:
        problems.append(
            f"the plan can produce {entries} status entries (one per step, and up to "
            f"{validation.MAX_FOR_EACH_ITEMS} per forEach step); a Run holds at most "
            f"{MAX_STATUS_STEP_ENTRIES}: use fewer forEach steps, or move them into child Runs"
        )
    if size > MAX_STATUS_STEP_BYTES:
        problems.append(
            f"the plan's steps can report {size / 2**20:.1f} MiB of outputs ({MAX_OUTPUT_BYTES} "
            f"bytes per attempt, twice for forEach items and cached steps); a Run's status "
            f"holds at most {MAX_STATUS_STEP_BYTES / 2**20:.0f} MiB: use fewer forEach steps, "
            "or move them into child Runs"
        )
    return problems


def agent_for(step: Step, agents: dict[str, AgentSpec]) -> str | None:
    """The Agent a step runs on: by name, or the first by name that has all required skills."""
    if step.agent_ref:
        return step.agent_ref.name if step.agent_ref.name in agents else None
    if step.agent_selector:
        wanted = set(step.agent_selector.skills)
        for name in sorted(agents):
            if wanted <= set(agents[name].skills or []):
                return name
    return None


def _choose_agents(
    plan: TemplateSpec, agents: dict[str, AgentSpec]
) -> tuple[dict[str, AgentSpec], dict[str, str]]:
    chosen: dict[str, AgentSpec] = {}
    missing: dict[str, str] = {}
    for step in [*plan.steps, *(plan.finally_ or [])]:
        if step.child_run:
            continue
        name = agent_for(step, agents)
        if name is not None:
            chosen[name] = agents[name]
        elif step.agent_ref:
            missing[step.agent_ref.name] = f"Agent {step.agent_ref.name} not found"
        elif step.agent_selector:
            skills = ",".join(step.agent_selector.skills)
            missing[f"skills:{skills}"] = f"no Agent has the skills {skills} (step {step.name})"
    return chosen, missing
