"""decide(): a Run's whole life as pure functions, without a server.

Most tests play a life with Sim (tests/unit/builders.py): decide, finish the Jobs the decision
asked for the way a Pod would, move the clock, decide again. Every decision Sim makes is also
checked for steps moving backwards and for a status the API server would reject.
"""

from __future__ import annotations

import json
import random
import re
from datetime import timedelta
from typing import Any

import pytest

from nofx.api import RunSpec, RunStatus
from nofx.api.run import TERMINAL_RUN_PHASES, TERMINAL_STEP_PHASES
from nofx.api.template import Step
from nofx.changes import transitions
from nofx.planner.attempts import POD_START_CHECK
from nofx.planner.decide import decide
from nofx.planner.facts import ChildRunRequest, Decision
from nofx.planner.naming import child_run_name, job_name
from nofx.planner.outputs import MAX_OUTPUT_BYTES, parse_outputs
from nofx.planner.pinning import agent_for
from tests.unit.builders import (
    AGENTS,
    RUN_UID,
    T0,
    Sim,
    agent,
    by_ref,
    condition,
    entry,
    inline,
    phases,
    step,
    template,
    view,
)

DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")


def inputs_of(decision: Decision, step_name: str, index: int | None = None) -> dict[str, Any]:
    [request] = [r for r in decision.create_jobs if r.step == step_name and r.index == index]
    return request.inputs


# --- before the start: resolving and pinning ------------------------------------------------


def test_an_invalid_template_keeps_the_run_pending_and_says_so() -> None:
    sim = Sim(by_ref("release"))
    sim.set_world(template_invalid=True)
    decision = sim.decide()
    assert condition(sim.status, "Ready") == (
        "False",
        "TemplateInvalid",
        "Template release is invalid (see its Ready condition)",
    )
    assert decision.waiting_for == {("Template", "release")}
    sim.set_world(template=template(step("build")), template_invalid=False)
    sim.decide()
    assert sim.status.phase == "Running"


def test_missing_template_keeps_the_run_pending_until_it_appears() -> None:
    sim = Sim(by_ref("release"))
    decision = sim.decide()
    assert sim.status.phase == "Pending"
    assert sim.status.message == "Template release not found"
    assert condition(sim.status, "Ready") == (
        "False",
        "TemplateMissing",
        "Template release not found",
    )
    assert condition(sim.status, "Succeeded")[:2] == ("Unknown", "TemplateMissing")
    assert decision.waiting_for == {("Template", "release")}
    assert decision.create_jobs == []
    assert sim.status.pinned is None and sim.status.steps is None

    sim.set_world(template=template(step("build")))
    sim.decide()
    assert sim.status.phase == "Running"
    assert sim.requested() == [("build", None, 1)]
    assert sim.status.pinned is not None and sim.status.pinned.template is not None
    assert sim.status.pinned.template.name == "release"
    assert condition(sim.status, "Ready")[:2] == ("True", "Started")
    assert sim.status.started_at == T0


def test_missing_agent_keeps_the_run_pending_until_it_appears() -> None:
    sim = Sim(inline(step("build", agent="builder")))
    decision = sim.decide()
    assert sim.status.phase == "Pending"
    assert sim.status.message == "Agent builder not found"
    assert condition(sim.status, "Ready")[:2] == ("False", "AgentMissing")
    assert decision.waiting_for == {("Agent", "builder")}
    assert decision.create_jobs == []

    sim.set_world(agents=AGENTS | {"builder": agent("ghcr.io/nofx/builder:3")})
    decision = sim.decide()
    assert sim.status.phase == "Running"
    [request] = decision.create_jobs
    assert (request.agent_name, request.agent.image) == ("builder", "ghcr.io/nofx/builder:3")


SKILLED = {
    "zeta": agent("zeta:1", skills=["review", "go"]),
    "beta": agent("beta:1", skills=["review"]),
    "alpha": agent("alpha:1", skills=["code"]),
}


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        ({"agentSelector": {"skills": ["review"]}}, "beta"),
        ({"agentSelector": {"skills": ["review", "go"]}}, "zeta"),
        ({"agentSelector": {"skills": ["code"]}}, "alpha"),
        ({"agentSelector": {"skills": ["code", "review"]}}, None),
        ({"agentRef": {"name": "zeta"}}, "zeta"),
        ({"agentRef": {"name": "ghost"}}, None),
        ({"childRun": {"templateRef": {"name": "sub"}}}, None),
    ],
)
def test_agent_for_picks_by_name_or_first_agent_by_name_with_all_skills(
    target: dict[str, Any], expected: str | None
) -> None:
    assert agent_for(Step.model_validate({"name": "s", **target}), SKILLED) == expected


def test_agent_selector_pins_the_chosen_agent() -> None:
    sim = Sim(inline(step("review", agentSelector={"skills": ["review"]})), agents=SKILLED)
    decision = sim.decide()
    [request] = decision.create_jobs
    assert (request.agent_name, request.agent.image) == ("beta", "beta:1")
    assert sim.status.pinned is not None and set(sim.status.pinned.agents or {}) == {"beta"}


def test_agent_selector_without_a_match_waits_and_names_the_skills() -> None:
    sim = Sim(inline(step("audit", agentSelector={"skills": ["security"]})), agents=SKILLED)
    decision = sim.decide()
    assert sim.status.phase == "Pending"
    assert sim.status.message == "no Agent has the skills security (step audit)"
    assert condition(sim.status, "Ready")[1] == "AgentMissing"
    assert decision.waiting_for == {("Agent", "skills:security")}


PARAMETERS = [
    {"name": "repo", "required": True},
    {"name": "count", "type": "integer", "default": 1},
    {"name": "branch", "default": "main"},
]


def test_parameters_get_their_defaults_and_reach_the_inputs() -> None:
    tpl = template(
        step("build", inputs={"repo": "{{ params.repo }}", "n": "{{ params.count }}"}),
        parameters=PARAMETERS,
    )
    sim = Sim(by_ref(parameters={"repo": "nofx/api", "count": 3}), template=tpl)
    decision = sim.decide()
    assert sim.status.pinned is not None
    assert sim.status.pinned.parameters == {"repo": "nofx/api", "count": 3, "branch": "main"}
    assert inputs_of(decision, "build") == {"repo": "nofx/api", "n": "3"}


@pytest.mark.parametrize(
    ("parameters", "problem"),
    [
        ({}, "spec.parameters.repo: required parameter is not set"),
        (
            {"repo": "x", "count": "three"},
            'spec.parameters.count: must be an integer, got string "three"',
        ),
        ({"repo": 7}, "spec.parameters.repo: must be a string, got integer 7"),
        ({"repo": "x", "colour": "red"}, "spec.parameters.colour: not a declared parameter"),
    ],
)
def test_bad_parameters_fail_the_run_naming_the_parameter(
    parameters: dict[str, Any], problem: str
) -> None:
    tpl = template(step("build"), parameters=PARAMETERS)
    sim = Sim(by_ref(parameters=parameters), template=tpl)
    decision = sim.decide()
    assert sim.status.phase == "Failed"
    assert problem in (sim.status.message or "")
    status, reason, message = condition(sim.status, "Succeeded")
    assert (status, reason) == ("False", "InvalidPlan") and problem in message
    assert condition(sim.status, "Ready")[:2] == ("False", "InvalidPlan")
    assert decision.create_jobs == [] and sim.status.finished_at == T0
    # A failed Run stays failed.
    assert sim.decide().create_jobs == [] and sim.status.phase == "Failed"


def test_dependency_cycle_fails_the_run_naming_the_cycle() -> None:
    sim = Sim(inline(step("a", "c"), step("b", "a"), step("c", "b"), step("d")))
    decision = sim.decide()
    assert sim.status.phase == "Failed"
    assert "spec.steps: dependency cycle a -> c -> b -> a" in (sim.status.message or "")
    assert condition(sim.status, "Succeeded")[1] == "InvalidPlan"
    assert decision.create_jobs == []


def test_unknown_dependency_fails_the_run() -> None:
    sim = Sim(inline(step("a", "nope")))
    sim.decide()
    assert sim.status.phase == "Failed"
    assert 'spec.steps[0].dependsOn: unknown step "nope"' in (sim.status.message or "")


def test_inline_plan_runs_with_its_parameters() -> None:
    sim = Sim(
        inline(
            step("greet", inputs={"text": "{{ params.greeting }} x{{ params.times }}"}),
            parameters={"greeting": "hi", "times": 2},
        )
    )
    decision = sim.decide()
    assert sim.status.phase == "Running"
    assert inputs_of(decision, "greet") == {"text": "hi x2"}
    assert sim.status.pinned is not None and sim.status.pinned.template is not None
    assert sim.status.pinned.template.name is None


def test_inline_plan_parameter_problems_point_at_parameter_definitions() -> None:
    sim = Sim(
        inline(
            step("greet"),
            parameterDefinitions=[{"name": "n", "type": "integer", "default": "many"}],
        )
    )
    sim.decide()
    assert sim.status.phase == "Failed"
    assert 'spec.parameterDefinitions[0].default: must be an integer, got string "many"' in (
        sim.status.message or ""
    )


def test_pinned_specs_are_used_even_when_template_and_agents_change() -> None:
    tpl = template(
        step("plan"),
        step("code", "plan", inputs={"p": "{{ params.p }}"}),
        parameters=[{"name": "p", "default": "v1"}],
    )
    sim = Sim(by_ref(), template=tpl)
    sim.decide()
    pinned = sim.status.pinned
    # Someone edits the Template and the Agent, then deletes every Agent.
    sim.set_world(
        template=template(step("other"), parameters=[{"name": "p", "default": "v2"}]),
        agents={"coder": agent("ghcr.io/nofx/coder:2")},
    )
    sim.succeed("plan")
    decision = sim.decide()
    assert [r.step for r in decision.create_jobs] == ["code"]
    assert decision.create_jobs[0].agent.image == "ghcr.io/nofx/coder:1"
    assert inputs_of(decision, "code") == {"p": "v1"}
    sim.set_world(agents={})
    sim.succeed("code")
    sim.decide()
    assert sim.status.phase == "Succeeded"
    assert sim.status.pinned == pinned
    assert list(phases(sim.status)) == ["plan", "code"]


# --- the graph ------------------------------------------------------------------------------


def test_independent_steps_run_in_parallel_and_fan_in_waits_for_all() -> None:
    sim = Sim(inline(step("a"), step("b", "a"), step("c", "a"), step("d", "b", "c")))
    sim.decide()
    assert sim.requested() == [("a", None, 1)]
    assert phases(sim.status) == {"a": "Running", "b": "Pending", "c": "Pending", "d": "Pending"}
    assert sim.status.progress == "0/4"

    sim.succeed("a")
    sim.decide()
    assert sim.requested() == [("b", None, 1), ("c", None, 1)]
    assert sim.status.progress == "1/4"

    sim.succeed("b")
    sim.decide()
    assert sim.requested() == []
    assert phases(sim.status)["d"] == "Pending"

    sim.succeed("c")
    sim.decide()
    assert sim.requested() == [("d", None, 1)]

    sim.succeed("d")
    sim.decide()
    assert sim.status.phase == "Succeeded"
    assert sim.status.progress == "4/4"
    assert sim.status.message == "all steps succeeded"
    assert condition(sim.status, "Succeeded")[:2] == ("True", "Succeeded")
    assert sim.status.finished_at == T0


def test_independent_roots_start_in_the_first_decision() -> None:
    sim = Sim(inline(step("a"), step("b"), step("c", agent="reviewer")))
    sim.decide()
    assert sim.requested() == [("a", None, 1), ("b", None, 1), ("c", None, 1)]
    assert sim.status.phase == "Running"
    assert condition(sim.status, "Succeeded") == ("Unknown", "Running", "the Run is running")


def test_steps_start_in_dependency_order_whatever_the_declaration_order() -> None:
    sim = Sim(inline(step("last", "middle"), step("middle", "first"), step("first")))
    sim.decide()
    assert sim.requested() == [("first", None, 1)]
    sim.succeed("first")
    sim.decide()
    assert sim.requested() == [("middle", None, 1)]
    assert [e.name for e in sim.status.steps or []] == ["last", "middle", "first"]


def test_job_names_are_deterministic_per_attempt() -> None:
    spec = inline(step("a"), step("b"))
    world = Sim(spec).world
    first = [r.job_name for r in decide(view(spec), world).create_jobs]
    again = [r.job_name for r in decide(view(spec), world).create_jobs]
    assert first == again  # a restarted operator asks for the very same Jobs
    assert first[0] == job_name("demo", RUN_UID, "a", None, 1)
    assert first[0].startswith("demo-a-") and first[0].endswith("-1")
    other_uid = [r.job_name for r in decide(view(spec, uid="another"), world).create_jobs]
    assert set(other_uid).isdisjoint(first)  # a re-created Run of the same name


def test_job_names_differ_by_step_index_attempt_and_run() -> None:
    names = {
        job_name("demo", RUN_UID, "a", None, 1),
        job_name("demo", RUN_UID, "a", None, 2),
        job_name("demo", RUN_UID, "b", None, 1),
        job_name("demo", RUN_UID, "a", 0, 1),
        job_name("demo", RUN_UID, "a", 1, 1),
        job_name("demo", "uid-2", "a", None, 1),
        job_name("demo2", RUN_UID, "a", None, 1),
        # "a-1" with no index must not collide with "a" item 1
        job_name("demo", RUN_UID, "a-1", None, 1),
    }
    assert len(names) == 8


LONG_STEP = "s" * 40


@pytest.mark.parametrize(
    "run_name",
    ["demo", "a" * 63, "r" * 253, "release-" + "x" * 100, "x" * 44 + "-" * 10 + "y"],
)
@pytest.mark.parametrize(("step_name", "index", "attempt"), [("a", None, 1), (LONG_STEP, 99, 11)])
def test_job_names_are_dns_labels_of_at_most_63_characters(
    run_name: str, step_name: str, index: int | None, attempt: int
) -> None:
    name = job_name(run_name, RUN_UID, step_name, index, attempt)
    assert len(name) <= 63
    assert DNS_LABEL.match(name), name
    assert name.endswith(f"-{attempt}")
    assert name.startswith(run_name[:8])


def test_job_names_of_dotted_run_names_are_dns_subdomains() -> None:
    # Run names are DNS subdomains; a cut must not leave "x.-a-...".
    name = job_name("x" * 51 + ".yyyy", RUN_UID, "a", None, 1)
    assert len(name) <= 63 and DNS_SUBDOMAIN.match(name), name
    assert not name.startswith("x" * 51 + ".")


# --- outputs --------------------------------------------------------------------------------


def test_outputs_become_step_outputs_downstream_inputs_and_plan_outputs() -> None:
    sim = Sim(
        inline(
            step("plan"),
            step(
                "code",
                "plan",
                inputs={
                    "task": "Task: {{ steps.plan.outputs.task }}",
                    "files": "{{ steps.plan.outputs.files }}",
                    "all": "{{ steps.plan.outputs }}",
                },
            ),
            outputs=[
                {"name": "pr", "value": "{{ steps.code.outputs.pr }}"},
                {
                    "name": "summary",
                    "value": "PR {{ steps.code.outputs.pr }} for {{ steps.plan.outputs.task }}",
                },
            ],
        )
    )
    sim.decide()
    sim.succeed("plan", outputs={"task": "fix bug", "files": ["a.py"]})
    decision = sim.decide()
    assert entry(sim.status, "plan").outputs == {"task": "fix bug", "files": ["a.py"]}
    assert entry(sim.status, "plan").message == "attempt 1 succeeded"
    assert inputs_of(decision, "code") == {
        "task": "Task: fix bug",
        "files": '["a.py"]',
        "all": '{"task":"fix bug","files":["a.py"]}',
    }
    sim.succeed("code", outputs={"pr": 42})
    sim.decide()
    assert sim.status.phase == "Succeeded"
    assert sim.status.outputs == {"pr": 42, "summary": "PR 42 for fix bug"}


def test_a_plan_output_of_a_skipped_step_is_null() -> None:
    sim = Sim(
        inline(
            step("test"),
            step(
                "open-pr",
                "test",
                when=[{"input": "{{ params.pr }}", "operator": "In", "values": ["true"]}],
            ),
            parameters={"pr": False},
            outputs=[
                {"name": "url", "value": "{{ steps.open-pr.outputs.url }}"},
                {"name": "coverage", "value": "{{ steps.test.outputs.coverage }}"},
            ],
        )
    )
    sim.decide()
    sim.succeed("test", outputs={"coverage": 0.9})
    sim.decide()
    assert entry(sim.status, "open-pr").phase == "Skipped"
    assert sim.status.phase == "Succeeded"
    assert sim.status.outputs == {"url": None, "coverage": 0.9}


@pytest.mark.parametrize(
    ("message", "problem"),
    [
        ("not json", "outputs are not valid JSON"),
        ('{"a": 1', "outputs are not valid JSON"),
        ("[1, 2]", "outputs must be a JSON object, got list: [1, 2]"),
        ('"done"', "outputs must be a JSON object, got str"),
        ("42", "outputs must be a JSON object, got int"),
        ('{"k": "' + "x" * MAX_OUTPUT_BYTES + '"}', "outputs are larger than 4096 bytes"),
    ],
)
def test_bad_outputs_fail_the_step_with_a_clear_message(message: str, problem: str) -> None:
    sim = Sim(inline(step("a"), step("b", "a")))
    sim.decide()
    sim.finish("a", message=message)
    sim.decide()
    a = entry(sim.status, "a")
    assert a.phase == "Failed"
    assert problem in (a.message or "")
    assert len(a.message or "") < 400  # quotes the output, but not all of it
    assert phases(sim.status)["b"] == "Skipped"
    assert sim.status.phase == "Failed"
    assert (sim.status.message or "").startswith(f"failed steps: a: {problem[:20]}")


@pytest.mark.parametrize("message", [None, "", "  \n"])
def test_empty_termination_message_means_empty_outputs(message: str | None) -> None:
    sim = Sim(inline(step("a")))
    sim.decide()
    sim.finish("a", message=message)
    sim.decide()
    assert entry(sim.status, "a").phase == "Succeeded"
    assert entry(sim.status, "a").outputs == {}
    assert sim.status.phase == "Succeeded"


def test_parse_outputs_limits_bytes_not_characters() -> None:
    def sized(total: int, char: str = "x") -> str:
        body = char * ((total - len('{"k":""}')) // len(char.encode()))
        return '{"k":"' + body + '"}'

    assert len(sized(MAX_OUTPUT_BYTES).encode()) == MAX_OUTPUT_BYTES
    assert parse_outputs(sized(MAX_OUTPUT_BYTES))[1] is None
    assert parse_outputs(sized(MAX_OUTPUT_BYTES + 1)) == ({}, "outputs are larger than 4096 bytes")
    wide = sized(MAX_OUTPUT_BYTES + 2, "é")  # 2049 characters, 4098 bytes
    assert len(wide) < MAX_OUTPUT_BYTES < len(wide.encode())
    assert parse_outputs(wide)[1] == "outputs are larger than 4096 bytes"
    assert parse_outputs(' {"a": [1, {"b": null}]}\n') == ({"a": [1, {"b": None}]}, None)
    assert parse_outputs(None) == ({}, None)


def test_outputs_with_more_keys_than_the_status_allows_fail_the_step() -> None:
    too_many = {f"k{i}": i for i in range(33)}
    _, problem = parse_outputs(json.dumps(too_many))
    assert problem is not None and "32" in problem
    sim = Sim(inline(step("a")))
    sim.decide()
    sim.succeed("a", outputs=too_many)
    sim.decide()  # validates the status against the API model
    assert entry(sim.status, "a").phase == "Failed"


# --- retries --------------------------------------------------------------------------------


def test_failed_attempt_waits_for_backoff_then_retries_then_fails() -> None:
    backoff = {"duration": "10s", "factor": 3, "maxDuration": "20s"}
    sim = Sim(inline(step("a", retries={"limit": 2, "backoff": backoff}), step("b", "a")))
    sim.decide()
    first = entry(sim.status, "a").job_name
    sim.tick(30)
    sim.fail("a")
    decision = sim.decide()
    a = entry(sim.status, "a")
    retry_at = T0 + timedelta(seconds=40)
    assert (a.phase, a.attempts, a.next_attempt_at) == ("Waiting", 1, retry_at)
    assert a.message == "attempt 1 failed: exit code 1: boom; retry 1 of 2 in 10s"
    assert decision.wake_at == retry_at
    assert decision.create_jobs == []
    assert sim.status.phase == "Running"

    sim.tick(9)
    decision = sim.decide()
    assert decision.create_jobs == [] and decision.wake_at == retry_at

    sim.tick(1)
    sim.decide()
    assert sim.requested() == [("a", None, 2)]
    a = entry(sim.status, "a")
    assert (a.phase, a.attempts, a.next_attempt_at) == ("Running", 2, None)
    assert a.job_name != first and a.job_name == job_name("demo", RUN_UID, "a", None, 2)
    assert a.started_at == T0  # when the first attempt started

    sim.fail("a")
    decision = sim.decide()
    a = entry(sim.status, "a")
    assert a.message == "attempt 2 failed: exit code 1: boom; retry 2 of 2 in 20s"  # capped
    assert decision.wake_at == sim.now + timedelta(seconds=20)

    sim.tick(20)
    sim.decide()
    assert sim.requested() == [("a", None, 3)]
    sim.fail("a")
    sim.decide()
    a = entry(sim.status, "a")
    assert (a.phase, a.attempts) == ("Failed", 3)
    assert a.message == "exit code 1: boom after 3 attempts"
    assert a.finished_at == sim.now and a.next_attempt_at is None
    assert phases(sim.status)["b"] == "Skipped"
    assert sim.status.phase == "Failed"
    assert sim.status.message == "failed steps: a: exit code 1: boom after 3 attempts"
    assert condition(sim.status, "Succeeded")[:2] == ("False", "StepsFailed")
    assert len(set(sim.created_jobs)) == 3


@pytest.mark.parametrize(
    ("backoff", "delays"),
    [
        ({}, [10, 20, 40]),
        ({"duration": "1s", "factor": 2, "maxDuration": "5m"}, [1, 2, 4]),
        ({"duration": "1m", "factor": 1}, [60, 60, 60]),
        ({"duration": "30s", "factor": 10, "maxDuration": "2m"}, [30, 120, 120]),
    ],
)
def test_backoff_is_duration_times_factor_per_retry_capped(
    backoff: dict[str, Any], delays: list[int]
) -> None:
    sim = Sim(inline(step("a", retries={"limit": 3, "backoff": backoff})))
    sim.decide()
    seen = []
    for _ in delays:
        sim.fail("a")
        decision = sim.decide()
        waiting = entry(sim.status, "a").next_attempt_at
        assert waiting is not None and decision.wake_at == waiting
        seen.append((waiting - sim.now).total_seconds())
        sim.tick(seen[-1])
        sim.decide()
    assert seen == delays


def test_a_retry_that_succeeds_gives_its_outputs() -> None:
    sim = Sim(inline(step("a", retries={"limit": 1, "backoff": {"duration": "1s"}})))
    sim.decide()
    sim.fail("a")
    sim.decide()
    sim.tick(1)
    sim.decide()
    sim.succeed("a", outputs={"ok": True})
    sim.decide()
    a = entry(sim.status, "a")
    assert (a.phase, a.attempts, a.outputs, a.message) == (
        "Succeeded",
        2,
        {"ok": True},
        "attempt 2 succeeded",
    )
    assert sim.status.phase == "Succeeded"


def test_without_retries_one_failure_fails_the_step() -> None:
    sim = Sim(inline(step("a")))
    sim.decide()
    sim.finish("a", state="Failed", exit_code=3, message="compile error\n")
    sim.decide()
    assert entry(sim.status, "a").message == "exit code 3: compile error"
    assert sim.status.phase == "Failed"


def test_a_job_that_disappears_fails_the_attempt() -> None:
    sim = Sim(inline(step("a")))
    sim.decide()
    name = entry(sim.status, "a").job_name
    sim.finish("a", state="Missing")
    sim.decide()
    assert entry(sim.status, "a").phase == "Failed"
    assert entry(sim.status, "a").message == f"Job {name} disappeared before it finished"


# --- timeouts -------------------------------------------------------------------------------


def test_step_timeout_becomes_the_job_deadline_and_a_timed_out_message() -> None:
    sim = Sim(inline(step("a", timeout="90s"), step("b")))
    decision = sim.decide()
    timeouts = {r.step: r.timeout_seconds for r in decision.create_jobs}
    assert timeouts == {"a": 90, "b": None}
    sim.finish("a", state="Failed", reason="DeadlineExceeded", exit_code=None)
    sim.decide()
    assert entry(sim.status, "a").phase == "Failed"
    assert entry(sim.status, "a").message == "timed out after 90s"


def test_run_timeout_stops_everything_at_the_deadline() -> None:
    tpl = template(step("a"), step("b", "a"), step("c"), timeout="1h")
    sim = Sim(by_ref(), template=tpl)
    decision = sim.decide()
    deadline = T0 + timedelta(hours=1)
    assert decision.wake_at == T0 + POD_START_CHECK  # a look at the new Jobs comes first
    assert sim.decide().wake_at == deadline
    sim.succeed("c")
    sim.tick(3599)
    decision = sim.decide()
    assert sim.status.phase == "Running" and decision.wake_at == deadline
    running = entry(sim.status, "a").job_name

    sim.tick(1)
    decision = sim.decide()
    assert decision.delete_jobs == [running]
    assert phases(sim.status) == {"a": "Cancelled", "b": "Skipped", "c": "Succeeded"}
    assert entry(sim.status, "a").message == "the Run exceeded its timeout of 1h"
    assert sim.status.phase == "Failed"
    assert condition(sim.status, "Succeeded") == (
        "False",
        "Timeout",
        "the Run exceeded its timeout of 1h",
    )
    assert sim.status.finished_at == deadline
    assert decision.create_jobs == []


def test_finally_steps_still_run_after_the_run_timeout() -> None:
    tpl = template(step("a"), timeout="1h", **{"finally": [step("cleanup")]})
    sim = Sim(by_ref(), template=tpl)
    sim.decide()
    sim.tick(3600)
    decision = sim.decide()
    assert phases(sim.status) == {"a": "Cancelled", "cleanup": "Running"}
    assert [job.step for job in decision.create_jobs] == ["cleanup"]
    assert sim.status.phase == "Running"
    sim.succeed("cleanup")
    sim.decide()
    assert sim.status.phase == "Failed"
    assert condition(sim.status, "Succeeded")[:2] == ("False", "Timeout")


def test_run_spec_timeout_overrides_the_template_timeout() -> None:
    sim = Sim(by_ref(timeout="30m"), template=template(step("a"), timeout="1h"))
    sim.decide()
    assert sim.decide().wake_at == T0 + timedelta(minutes=30)
    assert sim.status.pinned is not None and sim.status.pinned.template is not None
    assert sim.status.pinned.template.spec["timeout"] == "30m"


def test_wake_at_is_the_earliest_of_retry_and_run_deadline() -> None:
    sim = Sim(inline(step("a", retries={"limit": 1, "backoff": {"duration": "2m"}}), timeout="1m"))
    sim.decide()
    sim.fail("a")
    decision = sim.decide()
    assert decision.wake_at == T0 + timedelta(minutes=1)


# --- cancel, suspend, approval --------------------------------------------------------------


def test_cancel_deletes_running_jobs_and_skips_the_rest() -> None:
    sim = Sim(inline(step("a"), step("b"), step("c", "a", "b")))
    sim.decide()
    sim.succeed("a")
    sim.decide()
    running = entry(sim.status, "b").job_name
    sim.edit(cancel=True)
    decision = sim.decide()
    assert decision.delete_jobs == [running]
    assert decision.create_jobs == []
    assert phases(sim.status) == {"a": "Succeeded", "b": "Cancelled", "c": "Skipped"}
    assert entry(sim.status, "c").message == "cancelled by spec.cancel"
    assert sim.status.phase == "Cancelled"
    assert condition(sim.status, "Succeeded") == ("False", "Cancelled", "cancelled by spec.cancel")
    assert sim.status.progress == "3/3"
    # A finished Run does nothing more.
    decision = sim.decide()
    assert (decision.create_jobs, decision.delete_jobs) == ([], [])


def test_cancel_before_the_first_job_starts_nothing() -> None:
    sim = Sim(inline(step("a"), cancel=True))
    decision = sim.decide()
    assert decision.create_jobs == []
    assert phases(sim.status) == {"a": "Skipped"}
    assert sim.status.phase == "Cancelled"


def test_cancel_of_a_pending_run_cancels_it() -> None:
    sim = Sim(by_ref("missing"))
    sim.decide()
    sim.edit(cancel=True)
    sim.decide()
    assert sim.status.phase == "Cancelled"
    assert condition(sim.status, "Succeeded")[:2] == ("False", "Cancelled")


def test_suspend_starts_nothing_until_resumed() -> None:
    sim = Sim(inline(step("a"), step("b", "a"), suspend=True))
    decision = sim.decide()
    assert decision.create_jobs == []
    assert entry(sim.status, "a").phase == "Waiting"
    assert entry(sim.status, "a").message == "the Run is suspended"
    assert sim.status.phase == "Running"
    assert condition(sim.status, "Succeeded")[1:] == ("Suspended", "the Run is suspended")

    sim.edit(suspend=False)
    sim.decide()
    assert sim.requested() == [("a", None, 1)]

    # Suspending lets running Jobs finish but starts no new ones.
    sim.edit(suspend=True)
    sim.succeed("a")
    decision = sim.decide()
    assert decision.create_jobs == [] and decision.delete_jobs == []
    assert phases(sim.status) == {"a": "Succeeded", "b": "Waiting"}
    sim.edit(suspend=False)
    sim.decide()
    assert sim.requested() == [("b", None, 1)]


def test_suspend_holds_a_retry_after_its_backoff() -> None:
    sim = Sim(inline(step("a", retries={"limit": 1, "backoff": {"duration": "5s"}})))
    sim.decide()
    sim.fail("a")
    sim.decide()
    sim.edit(suspend=True)
    sim.tick(10)
    assert sim.decide().create_jobs == []
    sim.edit(suspend=False)
    sim.decide()
    assert sim.requested() == [("a", None, 2)]


def test_approval_gate_waits_for_an_approval() -> None:
    sim = Sim(
        inline(step("build"), step("deploy", "build", approval={"message": "check the diff"}))
    )
    sim.decide()
    sim.succeed("build")
    decision = sim.decide()
    assert decision.create_jobs == []
    deploy = entry(sim.status, "deploy")
    assert (deploy.phase, deploy.message) == ("Waiting", "waiting for approval: check the diff")
    assert sim.status.phase == "WaitingApproval"
    assert condition(sim.status, "Succeeded") == (
        "Unknown",
        "WaitingApproval",
        "waiting for approval of step deploy",
    )
    # An approval of another step does not count.
    sim.edit(approvals=[{"step": "build", "approvedBy": "ana@example.com"}])
    assert sim.decide().create_jobs == []

    sim.edit(
        approvals=[
            {"step": "build", "approvedBy": "ana@example.com"},
            {"step": "deploy", "approvedBy": "ana@example.com"},
        ]
    )
    sim.decide()
    assert sim.requested() == [("deploy", None, 1)]
    assert sim.status.phase == "Running"
    sim.succeed("deploy")
    sim.decide()
    assert sim.status.phase == "Succeeded"


def test_run_is_running_not_waiting_approval_while_other_steps_run() -> None:
    sim = Sim(inline(step("gated", approval={}), step("other")))
    sim.decide()
    assert sim.requested() == [("other", None, 1)]
    assert (
        entry(sim.status, "gated").message == "waiting for approval: approve it in spec.approvals"
    )
    assert sim.status.phase == "Running"
    sim.succeed("other")
    sim.decide()
    assert sim.status.phase == "WaitingApproval"


def test_approval_not_required_does_not_wait() -> None:
    sim = Sim(inline(step("a", approval={"required": False})))
    sim.decide()
    assert sim.requested() == [("a", None, 1)]


# --- when, skipping, finally ----------------------------------------------------------------


@pytest.mark.parametrize(("env", "deploy"), [("dev", "Skipped"), ("prod", "Running")])
def test_when_guards_skip_a_step_but_not_its_dependents(env: str, deploy: str) -> None:
    sim = Sim(
        inline(
            step(
                "deploy",
                when=[{"input": "{{ params.env }}", "operator": "In", "values": ["prod"]}],
            ),
            step("notify", "deploy"),
            step(
                "cleanup-dev",
                when=[{"input": "{{ params.env }}", "operator": "NotIn", "values": ["prod"]}],
            ),
            parameters={"env": env},
            parameterDefinitions=[{"name": "env", "default": "dev"}],
        )
    )
    sim.decide()
    assert phases(sim.status)["deploy"] == deploy
    if env == "dev":
        assert entry(sim.status, "deploy").message == "skipped: when 'dev' In ['prod'] is false"
        assert sim.requested() == [("notify", None, 1), ("cleanup-dev", None, 1)]
        sim.succeed("notify")
        sim.succeed("cleanup-dev")
        sim.decide()
        assert sim.status.phase == "Succeeded"
    else:
        assert entry(sim.status, "cleanup-dev").message == (
            "skipped: when 'prod' NotIn ['prod'] is false"
        )
        assert sim.requested() == [("deploy", None, 1)]


def test_when_can_read_upstream_outputs() -> None:
    sim = Sim(
        inline(
            step("review"),
            step(
                "merge",
                "review",
                when=[
                    {
                        "input": "{{ steps.review.outputs.verdict }}",
                        "operator": "In",
                        "values": ["lgtm"],
                    }
                ],
            ),
        )
    )
    sim.decide()
    sim.succeed("review", outputs={"verdict": "changes requested"})
    sim.decide()
    assert entry(sim.status, "merge").phase == "Skipped"
    assert sim.status.phase == "Succeeded"


def test_dependents_of_a_failed_step_are_skipped_and_the_run_fails() -> None:
    sim = Sim(inline(step("a"), step("b", "a"), step("c")))
    sim.decide()
    sim.fail("a")
    decision = sim.decide()
    assert decision.create_jobs == []
    assert entry(sim.status, "b").phase == "Skipped"
    assert entry(sim.status, "b").message == "skipped: upstream a did not succeed"
    assert sim.status.phase == "Running"  # c still runs
    sim.succeed("c")
    sim.decide()
    assert sim.status.phase == "Failed"
    assert sim.status.message == "failed steps: a: exit code 1: boom"


def test_a_failure_skips_every_step_downstream_not_only_the_next() -> None:
    sim = Sim(inline(step("a"), step("b", "a"), step("c", "b")))
    sim.decide()
    sim.fail("a")
    decision = sim.decide()
    assert decision.create_jobs == []
    assert phases(sim.status) == {"a": "Failed", "b": "Skipped", "c": "Skipped"}


def test_finally_steps_run_after_all_main_steps_even_after_a_failure() -> None:
    sim = Sim(
        inline(
            step("a"),
            step("b", "a"),
            step("c"),
            **{
                "finally": [
                    step("cleanup", inputs={"a": "{{ steps.c.outputs.x }}"}),
                    step("report", "cleanup"),
                ]
            },
        )
    )
    sim.decide()
    assert sim.requested() == [("a", None, 1), ("c", None, 1)]
    sim.fail("a")
    sim.decide()
    # b is skipped, but c still runs: finally waits.
    assert phases(sim.status)["cleanup"] == "Pending"
    sim.succeed("c", outputs={"x": "from c"})
    decision = sim.decide()
    assert sim.requested() == [("cleanup", None, 1)]
    assert inputs_of(decision, "cleanup") == {"a": "from c"}
    sim.succeed("cleanup")
    sim.decide()
    assert sim.requested() == [("report", None, 1)]
    sim.succeed("report")
    sim.decide()
    assert phases(sim.status) == {
        "a": "Failed",
        "b": "Skipped",
        "c": "Succeeded",
        "cleanup": "Succeeded",
        "report": "Succeeded",
    }
    assert sim.status.phase == "Failed"
    assert sim.status.message == "failed steps: a: exit code 1: boom"


def test_a_failed_finally_step_fails_the_run() -> None:
    sim = Sim(inline(step("a"), **{"finally": [step("cleanup")]}))
    sim.decide()
    sim.succeed("a")
    sim.decide()
    assert sim.requested() == [("cleanup", None, 1)]
    sim.fail("cleanup")
    sim.decide()
    assert sim.status.phase == "Failed"
    assert sim.status.message == "failed steps: cleanup: exit code 1: boom"


# --- forEach --------------------------------------------------------------------------------

REPOS = [f"repo-{i}" for i in range(5)]


def fan_out(max_parallel: int | None = 2) -> Sim:
    extra: dict[str, Any] = {"maxParallel": max_parallel} if max_parallel else {}
    return Sim(
        inline(
            step(
                "fan",
                forEach="{{ params.repos }}",
                inputs={"repo": "{{ item }}", "i": "{{ index }}"},
                **extra,
            ),
            step("join", "fan", inputs={"all": "{{ steps.fan.outputs.n }}"}),
            parameters={"repos": REPOS},
        )
    )


def test_for_each_runs_one_job_per_item_with_max_parallel_then_joins() -> None:
    sim = fan_out(max_parallel=2)
    decision = sim.decide()
    items = [e for e in sim.status.steps or [] if e.name == "fan" and e.index is not None]
    assert [(e.index, e.item) for e in items] == list(enumerate(REPOS))
    assert sim.requested() == [("fan", 0, 1), ("fan", 1, 1)]
    assert inputs_of(decision, "fan", 1) == {"repo": "repo-1", "i": "1"}
    assert [r.item for r in decision.create_jobs] == ["repo-0", "repo-1"]
    parent = entry(sim.status, "fan")
    assert (parent.phase, parent.message) == ("Running", "0/5 items finished")
    assert sim.status.progress == "0/2"  # items are not steps

    while active := [
        e for e in sim.status.steps or [] if e.index is not None and e.phase == "Running"
    ]:
        assert len(active) <= 2
        first = active[0]
        assert first.index is not None
        sim.succeed("fan", first.index, outputs={"n": first.index})
        sim.decide()
    parent = entry(sim.status, "fan")
    assert parent.phase == "Succeeded"
    assert parent.message == "all 5 items succeeded"
    # The join: each key any item reported, as a list with one entry per item.
    assert parent.outputs == {"n": [0, 1, 2, 3, 4]}
    [join] = sim.last.create_jobs
    assert join.step == "join" and join.inputs == {"all": "[0,1,2,3,4]"}
    item_jobs = [name for name in sim.created_jobs if "-fan-" in name]
    assert len(set(item_jobs)) == 5
    assert all(f"-fan-{i}-" in item_jobs[i] for i in range(5))


def test_for_each_without_max_parallel_starts_every_item() -> None:
    sim = fan_out(max_parallel=None)
    sim.decide()
    assert sim.requested() == [("fan", i, 1) for i in range(5)]


def test_for_each_item_failure_fails_the_step_after_all_items_finish() -> None:
    sim = fan_out(max_parallel=None)
    sim.decide()
    sim.fail("fan", 1)
    sim.fail("fan", 3)
    sim.succeed("fan", 0)
    sim.decide()
    assert entry(sim.status, "fan").phase == "Running"
    assert entry(sim.status, "fan").message == "3/5 items finished"
    sim.succeed("fan", 2)
    sim.succeed("fan", 4)
    sim.decide()
    fan = entry(sim.status, "fan")
    assert (fan.phase, fan.message) == ("Failed", "items 1, 3 failed")
    assert entry(sim.status, "join").phase == "Skipped"
    assert sim.status.phase == "Failed"


def test_for_each_joins_outputs_per_key_with_null_where_an_item_had_none() -> None:
    sim = Sim(
        inline(
            step("fan", forEach='["x", "y", "z"]'),
            step("join", "fan", inputs={"urls": "{{ steps.fan.outputs.url }}"}),
        )
    )
    sim.decide()
    sim.succeed("fan", 0, outputs={"url": "u0", "extra": True})
    sim.succeed("fan", 1, outputs={})
    sim.succeed("fan", 2, outputs={"url": "u2"})
    decision = sim.decide()
    assert entry(sim.status, "fan").outputs == {
        "url": ["u0", None, "u2"],
        "extra": [True, None, None],
    }
    assert inputs_of(decision, "join") == {"urls": '["u0",null,"u2"]'}


def test_for_each_over_an_empty_list_succeeds_at_once() -> None:
    sim = Sim(inline(step("fan", forEach="[]"), step("next", "fan")))
    decision = sim.decide()
    fan = entry(sim.status, "fan")
    assert (fan.phase, fan.message) == ("Succeeded", "forEach over an empty list")
    assert fan.outputs == {}
    assert [r.step for r in decision.create_jobs] == ["next"]


def test_reading_a_key_of_an_empty_for_each_gives_an_empty_list() -> None:
    sim = Sim(
        inline(
            step("fan", forEach="{{ params.repos }}"),
            step("join", "fan", inputs={"urls": "{{ steps.fan.outputs.url }}"}),
            parameters={"repos": []},
        )
    )
    decision = sim.decide()
    assert entry(sim.status, "join").phase == "Running", entry(sim.status, "join").message
    assert inputs_of(decision, "join") == {"urls": "[]"}


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ({"a": 1}, 'steps.fan.forEach: must render to a JSON array, got {"a":1}'),
        (
            "not a list",
            "steps.fan.forEach: must render to a JSON array, got the string 'not a list'",
        ),
    ],
)
def test_for_each_over_a_non_list_fails_the_step(value: Any, problem: str) -> None:
    sim = Sim(inline(step("fan", forEach="{{ params.what }}"), parameters={"what": value}))
    sim.decide()
    assert entry(sim.status, "fan").phase == "Failed"
    assert entry(sim.status, "fan").message == problem
    assert sim.status.phase == "Failed"


def test_max_parallel_holds_across_item_retries() -> None:
    sim = Sim(
        inline(
            step(
                "fan",
                forEach='["a", "b", "c"]',
                maxParallel=2,
                retries={"limit": 1, "backoff": {"duration": "10s"}},
            )
        )
    )
    sim.decide()
    sim.fail("fan", 0)
    sim.decide()
    sim.tick(10)
    sim.decide()
    running = [
        e.index for e in sim.status.steps or [] if e.index is not None and e.phase == "Running"
    ]
    assert len(running) <= 2, f"items {running} run at once"


def test_for_each_child_run_step_does_not_crash() -> None:
    sim = Sim(
        inline(step("fan", forEach='["x", "y"]', childRun={"templateRef": {"name": "review"}}))
    )
    decision = sim.decide()
    fan = entry(sim.status, "fan")
    per_item = sorted((c.index, c.step) for c in decision.create_child_runs)
    assert per_item == [(0, "fan"), (1, "fan")] or (
        fan.phase == "Failed" and "childRun" in (fan.message or "")
    )


# --- childRun -------------------------------------------------------------------------------


def hierarchical() -> Sim:
    return Sim(
        inline(
            step("plan"),
            step(
                "sub",
                "plan",
                childRun={
                    "templateRef": {"name": "review"},
                    "parameters": {"task": "do {{ steps.plan.outputs.task }}", "depth": 2},
                },
            ),
            step("after", "sub", inputs={"verdict": "{{ steps.sub.outputs.verdict }}"}),
        )
    )


def test_child_run_step_creates_a_child_run_and_takes_its_outputs() -> None:
    sim = hierarchical()
    sim.decide()
    sim.succeed("plan", outputs={"task": "fix"})
    decision = sim.decide()
    name = child_run_name("demo", RUN_UID, "sub", None)
    assert decision.create_child_runs == [
        ChildRunRequest(
            name=name,
            step="sub",
            index=None,
            template="review",
            parameters={"task": "do fix", "depth": 2},
        )
    ]
    assert decision.create_jobs == []
    assert name == job_name("demo", RUN_UID, "sub", None, 0).removesuffix("-0")
    assert len(name) <= 63 and DNS_LABEL.match(name)
    sub = entry(sim.status, "sub")
    assert (sub.phase, sub.child_run_name, sub.message) == (
        "Running",
        name,
        f"child Run {name} running",
    )
    # Nothing new while the child runs; the same name on every decision.
    assert sim.decide().create_child_runs == []
    assert child_run_name("demo", RUN_UID, "sub", None) == name

    sim.child("sub", "Succeeded", outputs={"verdict": "lgtm"})
    decision = sim.decide()
    sub = entry(sim.status, "sub")
    assert (sub.phase, sub.outputs, sub.message) == (
        "Succeeded",
        {"verdict": "lgtm"},
        f"child Run {name} succeeded",
    )
    assert inputs_of(decision, "after") == {"verdict": "lgtm"}


@pytest.mark.parametrize(
    ("phase", "message", "expected"),
    [
        ("Failed", "tests failed", "failed: tests failed"),
        ("Cancelled", None, "cancelled"),
    ],
)
def test_child_run_failure_fails_the_step(phase: str, message: str | None, expected: str) -> None:
    sim = hierarchical()
    sim.decide()
    sim.succeed("plan", outputs={"task": "fix"})
    sim.decide()
    sim.child("sub", phase, message=message)
    sim.decide()
    name = child_run_name("demo", RUN_UID, "sub", None)
    assert entry(sim.status, "sub").phase == "Failed"
    assert entry(sim.status, "sub").message == f"child Run {name} {expected}"
    assert entry(sim.status, "after").phase == "Skipped"
    assert sim.status.phase == "Failed"


def test_a_deleted_child_run_fails_the_step() -> None:
    sim = hierarchical()
    sim.decide()
    sim.succeed("plan", outputs={"task": "fix"})
    sim.decide()
    sim.child("sub", "Missing")
    sim.decide()
    name = child_run_name("demo", RUN_UID, "sub", None)
    assert entry(sim.status, "sub").phase == "Failed"
    assert entry(sim.status, "sub").message == f"child Run {name} was deleted before it finished"


def test_cancel_cancels_running_child_runs() -> None:
    sim = hierarchical()
    sim.decide()
    sim.succeed("plan", outputs={"task": "fix"})
    sim.decide()
    sim.edit(cancel=True)
    decision = sim.decide()
    assert decision.cancel_child_runs == [child_run_name("demo", RUN_UID, "sub", None)]
    assert entry(sim.status, "sub").phase == "Cancelled"


def test_child_run_names_differ_per_step_and_parent() -> None:
    names = {
        child_run_name("demo", RUN_UID, "a", None),
        child_run_name("demo", RUN_UID, "b", None),
        child_run_name("demo", "uid-2", "a", None),
    }
    assert len(names) == 3
    long = child_run_name("p" * 253, RUN_UID, "s" * 40, None)
    assert len(long) <= 63 and DNS_LABEL.match(long)


# --- agent concurrency ----------------------------------------------------------------------

LIMITED = AGENTS | {"coder": agent("ghcr.io/nofx/coder:1", maxConcurrentSteps=2)}


def test_no_free_slot_makes_the_step_wait_for_the_agent() -> None:
    sim = Sim(inline(step("a")), agents=LIMITED, free_slots={"coder": 0})
    decision = sim.decide()
    assert decision.create_jobs == []
    a = entry(sim.status, "a")
    assert (a.phase, a.message) == (
        "Waiting",
        "waiting for a free slot of Agent coder (maxConcurrentSteps 2)",
    )
    assert decision.waiting_for == {("AgentSlot", "coder")}
    assert sim.status.phase == "Running"

    sim.set_world(free_slots={"coder": 1})
    sim.decide()
    assert sim.requested() == [("a", None, 1)]


def test_one_free_slot_starts_one_of_three_ready_steps() -> None:
    sim = Sim(
        inline(step("a"), step("b"), step("c"), step("r", agent="reviewer")),
        agents=LIMITED,
        free_slots={"coder": 1},
    )
    sim.decide()
    assert sim.requested() == [("a", None, 1), ("r", None, 1)]
    assert phases(sim.status) == {"a": "Running", "b": "Waiting", "c": "Waiting", "r": "Running"}
    assert sim.last.waiting_for == {("AgentSlot", "coder")}


def test_free_slots_limit_for_each_items_too() -> None:
    sim = fan_out(max_parallel=None)
    sim.set_world(agents=LIMITED, free_slots={"coder": 2})
    sim.decide()
    assert sim.requested() == [("fan", 0, 1), ("fan", 1, 1)]


# --- time to live ---------------------------------------------------------------------------


def test_ttl_deletes_a_finished_run_after_its_time() -> None:
    sim = Sim(inline(step("a"), ttlSecondsAfterFinished=60))
    sim.decide()
    sim.tick(5)
    sim.succeed("a")
    decision = sim.decide()
    finished = T0 + timedelta(seconds=5)
    assert sim.status.phase == "Succeeded" and sim.status.finished_at == finished
    assert decision.wake_at == finished + timedelta(seconds=60)
    assert not decision.delete_run

    sim.tick(59)
    decision = sim.decide()
    assert not decision.delete_run and decision.wake_at == finished + timedelta(seconds=60)
    sim.tick(1)
    assert sim.decide().delete_run


def test_without_ttl_a_finished_run_stays() -> None:
    sim = Sim(inline(step("a")))
    sim.decide()
    sim.succeed("a")
    assert sim.decide().wake_at is None
    sim.tick(10**6)
    decision = sim.decide()
    assert not decision.delete_run and decision.wake_at is None


def test_ttl_applies_to_failed_and_cancelled_runs() -> None:
    sim = Sim(inline(step("a"), ttlSecondsAfterFinished=0, cancel=True))
    decision = sim.decide()
    assert sim.status.phase == "Cancelled" and decision.wake_at == T0
    assert sim.decide().delete_run


def test_ttl_applies_to_runs_that_could_not_start() -> None:
    for spec in (
        inline(step("a", "a"), ttlSecondsAfterFinished=60),  # InvalidPlan: a cycle
        inline(step("a"), ttlSecondsAfterFinished=60, account="other"),  # AccountMismatch
    ):
        sim = Sim(spec)
        assert sim.decide().wake_at == T0 + timedelta(seconds=60)
        assert sim.status.phase == "Failed"
        sim.tick(60)
        assert sim.decide().delete_run


# --- usage ----------------------------------------------------------------------------------


def test_usage_meters_wall_time_and_cost_per_attempt() -> None:
    priced = {"coder": agent("c:1", pricing={"perHour": "0.90", "currency": "EUR"})}
    sim = Sim(inline(step("a", retries={"limit": 1, "backoff": {"duration": "1s"}})), agents=priced)
    sim.decide()
    sim.tick(1800)
    sim.fail("a")
    decision = sim.decide()
    [attempt] = decision.finished_attempts
    assert (attempt.step, attempt.attempt, attempt.outcome, attempt.wall_seconds) == (
        "a",
        1,
        "Failed",
        1800,
    )
    assert sim.status.usage is not None
    assert (sim.status.usage.wall_seconds, sim.status.usage.cost) == (1800, "0.45")
    assert sim.status.usage.currency == "EUR"
    sim.tick(1)
    sim.decide()
    sim.tick(600)
    sim.succeed("a")
    sim.decide()
    assert (sim.status.usage.wall_seconds, sim.status.usage.cost) == (2400, "0.6")
    # Re-deciding the same observations meters nothing twice.
    assert sim.decide().finished_attempts == []
    assert sim.status.usage.cost == "0.6"


# --- the property: steps only move forward, decide() is idempotent --------------------------


def random_plan(rng: random.Random) -> RunSpec:
    return inline(
        step("a", retries={"limit": 1, "backoff": {"duration": "1s"}}),
        step(
            "b",
            "a",
            retries={"limit": 2, "backoff": {"duration": "1s", "factor": 3, "maxDuration": "2s"}},
            timeout="1m",
            inputs={"x": "{{ steps.a.outputs.x }}"},
        ),
        step("c", "a", when=[{"input": "{{ params.mode }}", "operator": "In", "values": ["full"]}]),
        step("fan", "a", forEach='["p", "q", "r"]', maxParallel=2),
        step("d", "b", "c", "fan", approval={}),
        parameters={"mode": rng.choice(["full", "lite"])},
        timeout=rng.choice(["8s", "5m"]),
        **{"finally": [step("cleanup", retries={"limit": 1, "backoff": {"duration": "1s"}})]},
    )


# How a Job ends, with weights: mostly well, sometimes in every other way there is.
OUTCOMES = {
    "ok": 16,
    "ok-empty": 1,
    "still-running": 1,
    "fail": 2,
    "deadline": 1,
    "gone": 1,
    "junk": 1,
}


def finish_randomly(sim: Sim, rng: random.Random, job: str) -> None:
    [outcome] = rng.choices(list(OUTCOMES), weights=list(OUTCOMES.values()))
    if outcome == "ok":
        sim.finish_job(job, outputs={"x": rng.randint(0, 9)})
    elif outcome == "ok-empty":
        sim.finish_job(job, message="")
    elif outcome == "fail":
        sim.finish_job(job, state="Failed", message="boom")
    elif outcome == "deadline":
        sim.finish_job(job, state="Failed", reason="DeadlineExceeded", exit_code=None)
    elif outcome == "gone":
        sim.finish_job(job, state="Missing", exit_code=None)
    elif outcome == "junk":
        sim.finish_job(job, message="not json")


def play_random_life(rng: random.Random, number: int) -> Sim:
    sim = Sim(random_plan(rng), name=f"life-{number}", uid=f"uid-{number}", check_schema=False)
    for _ in range(40):
        world_before = sim.world
        decision = sim.decide()  # also checks that no step moved backwards
        # decide() on its own output, with nothing new observed, changes nothing.
        again = decide(sim.view, world_before)
        assert again.status == decision.status
        assert (again.create_jobs, again.create_child_runs, again.delete_jobs) == ([], [], [])
        assert again.finished_attempts == []
        fan_running = [
            e for e in sim.status.steps or [] if e.index is not None and e.phase == "Running"
        ]
        assert len(fan_running) <= 2  # maxParallel
        if sim.status.phase in TERMINAL_RUN_PHASES:
            return sim
        for job in sim.active_jobs():
            finish_randomly(sim, rng, job)
        if not sim.spec.approvals and rng.random() < 0.5:
            sim.edit(approvals=[{"step": "d", "approvedBy": "ana@example.com"}])
        if rng.random() < (0.5 if sim.spec.suspend else 0.05):
            sim.edit(suspend=not sim.spec.suspend)
        if rng.random() < 0.015:
            sim.edit(cancel=True)
        sim.tick(rng.choice([1, 2]))
    return sim


def test_random_lives_only_move_forward_and_decide_is_idempotent() -> None:
    rng = random.Random(20300101)
    endings: dict[str, int] = {}
    for number in range(160):
        sim = play_random_life(rng, number)
        phase = sim.status.phase or "None"
        endings[phase] = endings.get(phase, 0) + 1
        RunStatus.model_validate(sim.status.to_dict())  # a status the API server accepts
        if phase in TERMINAL_RUN_PHASES:
            assert sim.status.finished_at is not None
            assert condition(sim.status, "Succeeded")[0] == (
                "True" if phase == "Succeeded" else "False"
            )
            assert all(e.phase in TERMINAL_STEP_PHASES for e in sim.status.steps or [])
            assert sim.active_jobs() == []  # nothing left running behind a finished Run
    # The lives reach every ending, not one path.
    assert {"Succeeded", "Failed", "Cancelled"} <= set(endings), endings


# --- transitions ----------------------------------------------------------------------------


def reasons(old: RunStatus, new: RunStatus) -> list[tuple[str | None, str, int | None]]:
    return [(t.step, t.reason, t.attempt) for t in transitions(old, new)]


def test_transitions_tell_the_story_of_a_run() -> None:
    sim = Sim(
        inline(
            step("a", retries={"limit": 1, "backoff": {"duration": "1s"}}),
            step("b", "a", when=[{"input": "x", "operator": "In", "values": ["y"]}]),
            step("c", "a"),
        )
    )
    old = sim.status
    sim.decide()
    changes = transitions(old, sim.status)
    assert [(t.step, t.reason, t.from_phase, t.to_phase) for t in changes] == [
        (None, "RunRunning", None, "Running"),
        ("a", "StepStarted", None, "Running"),
    ]
    assert changes[1].message.startswith("step a: attempt 1 running as Job demo-a-")
    assert changes[0].message == "the Run is running"
    assert not any(t.warning for t in changes)

    old = sim.status
    sim.fail("a")
    sim.decide()
    [retrying] = transitions(old, sim.status)
    assert (retrying.reason, retrying.attempt, retrying.warning) == ("StepRetrying", 1, True)
    assert retrying.message == "step a: attempt 1 failed: exit code 1: boom; retry 1 of 1 in 1s"

    old = sim.status
    sim.tick(1)
    sim.decide()
    assert reasons(old, sim.status) == [("a", "StepStarted", 2)]

    old = sim.status
    sim.succeed("a")
    sim.decide()
    assert reasons(old, sim.status) == [
        ("a", "StepSucceeded", 2),
        ("b", "StepSkipped", None),
        ("c", "StepStarted", 1),
    ]

    old = sim.status
    sim.fail("c")
    sim.decide()
    changes = transitions(old, sim.status)
    assert [(t.step, t.reason, t.to_phase) for t in changes] == [
        ("c", "StepFailed", "Failed"),
        (None, "RunFailed", "Failed"),
    ]
    assert all(t.warning for t in changes)
    assert changes[1].message == "failed steps: c: exit code 1: boom"

    assert transitions(sim.status, sim.status) == []
    assert transitions(sim.status, sim.decide().status) == []


def test_transitions_of_waiting_pending_and_cancelled_runs() -> None:
    sim = Sim(by_ref("tpl"))
    old = sim.status
    sim.decide()
    [pending] = transitions(old, sim.status)
    assert (pending.step, pending.reason, pending.to_phase, pending.warning) == (
        None,
        "Pending",
        "Pending",
        True,
    )
    assert pending.message == "Template tpl not found"

    sim.set_world(
        template=template(step("gate", approval={"message": "ok?"}), step("fan", forEach="[1, 2]"))
    )
    old = sim.status
    sim.decide()
    changes = transitions(old, sim.status)
    assert [(t.step, t.index, t.reason) for t in changes] == [
        (None, None, "RunRunning"),  # the Run starts, then its steps do
        ("gate", None, "StepWaiting"),
        ("fan", None, "StepStarted"),
        ("fan", 0, "StepStarted"),
        ("fan", 1, "StepStarted"),
    ]
    assert changes[1].message == "step gate: waiting for approval: ok?"
    assert changes[3].message.startswith("step fan[0]: attempt 1 running")

    sim.succeed("fan", 0)
    sim.succeed("fan", 1)
    old = sim.status
    sim.decide()
    assert [(t.step, t.index, t.reason) for t in transitions(old, sim.status)] == [
        ("fan", None, "StepSucceeded"),
        ("fan", 0, "StepSucceeded"),
        ("fan", 1, "StepSucceeded"),
        (None, None, "RunWaitingApproval"),
    ]

    sim.edit(cancel=True)
    old = sim.status
    sim.decide()
    changes = transitions(old, sim.status)
    assert [(t.step, t.reason) for t in changes] == [
        ("gate", "StepSkipped"),
        (None, "RunCancelled"),
    ]
    assert changes[1].message == "cancelled by spec.cancel"


# --- statuses the API server accepts --------------------------------------------------------


def test_the_run_message_fits_the_status_even_with_many_failed_steps() -> None:
    sim = Sim(inline(*(step(f"s{i}") for i in range(10))))
    sim.decide()
    for i in range(10):
        sim.finish(f"s{i}", state="Failed", message="E" * 600)
    decision = decide(sim.view, sim.world)
    assert decision.status.phase == "Failed"
    assert len(decision.status.message or "") <= 4096
    RunStatus.model_validate(decision.status.to_dict())


def test_decide_does_not_change_its_input() -> None:
    sim = Sim(inline(step("a"), step("b", "a")))
    sim.decide()
    sim.succeed("a")
    before = sim.status.model_copy(deep=True)
    run = sim.view
    decide(run, sim.world)
    assert run.status == before
