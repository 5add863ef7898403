"""The bench's writes per Run, counted from the API server's audit log (nofx_dev.audit)."""

import json
from pathlib import Path

import pytest

from nofx_dev.audit import POLICY, AuditLog, Write, parse, writes_per_run


def event(
    user: str,
    verb: str,
    resource: str,
    code: int = 200,
    namespace: str | None = "bench",
    subresource: str | None = None,
    stage: str = "ResponseComplete",
) -> str:
    ref: dict[str, str] = {"resource": resource, "name": "x"}
    if namespace:
        ref["namespace"] = namespace
    if subresource:
        ref["subresource"] = subresource
    return json.dumps(
        {
            "kind": "Event",
            "apiVersion": "audit.k8s.io/v1",
            "level": "Metadata",
            "stage": stage,
            "verb": verb,
            "requestURI": f"/apis/x/v1/namespaces/{namespace}/{resource}",
            "user": {"username": user, "groups": ["system:masters"]},
            "objectRef": ref,
            "responseStatus": {"metadata": {}, "code": code},
        }
    )


def test_parse_keeps_completed_writes_with_user_kind_namespace_and_code() -> None:
    lines = [
        event("nofx-operator", "patch", "runs", subresource="status"),
        event("nofx-operator", "create", "jobs", code=201),
        event("nofx-operator", "create", "jobs", stage="Panic"),
        event("nofx-admin", "get", "runs"),  # not a write
        "",
        "not json",
        json.dumps(
            {
                "stage": "ResponseComplete",
                "verb": "create",
                "requestURI": "/api/v1/namespaces/bench/pods/p/binding?timeout=5s",
                "user": {"username": "system:kube-scheduler"},
                "responseStatus": {"code": 201},
            }
        ),
    ]
    assert parse(lines) == [
        Write("nofx-operator", "patch", "runs/status", "bench", 200),
        Write("nofx-operator", "create", "jobs", "bench", 201),
        Write(
            "system:kube-scheduler", "create", "/api/v1/namespaces/bench/pods/p/binding", None, 201
        ),
    ]
    assert parse(lines)[0].kind == "patch runs/status"


def test_writes_per_run_by_user_and_kind_with_failures_apart() -> None:
    operator, admin, jobs = "nofx-operator", "nofx-admin", "system:kube-controller-manager"
    writes = parse(
        [
            *[event(admin, "create", "runs", code=201)] * 2,
            *[event(operator, "create", "jobs", code=201)] * 6,
            *[event(operator, "patch", "runs", subresource="status")] * 16,
            event(operator, "patch", "runs", subresource="status", code=409),
            *[event(jobs, "update", "jobs", subresource="status")] * 24,
            event(jobs, "update", "jobs", subresource="status", code=409),
            event(jobs, "update", "jobs", subresource="status", code=409),
            event("kwok", "patch", "nodes", subresource="status", namespace=None),
            event(operator, "create", "jobs", code=201, namespace="elsewhere"),
        ]
    )
    counted = writes_per_run(writes, runs=2, namespace="bench", operator=operator)
    assert counted == {
        "runs": 2,
        "operator_total": 11.0,
        "system_total": 24.0,
        "by_user": {jobs: 12.0, operator: 11.0, admin: 1.0},
        "operator_by_kind": {"patch runs/status": 8.0, "create jobs": 3.0},
        "system_by_kind": {
            "update jobs/status": 12.0,
            "patch runs/status": 8.0,
            "create jobs": 3.0,
            "create runs": 1.0,
        },
        "failed": {
            "operator_total": 0.5,
            "system_total": 1.5,
            "by_user": {jobs: 1.0, operator: 0.5},
            "operator_by_kind": {"patch runs/status 409": 0.5},
            "system_by_kind": {"update jobs/status 409": 1.0, "patch runs/status 409": 0.5},
        },
        "outside_namespace": 2,
    }


def test_writes_per_run_with_no_finished_run() -> None:
    counted = writes_per_run([], runs=0, namespace="bench", operator="nofx-operator")
    assert counted["system_total"] is None and counted["by_user"] == {}


def test_audit_log_reads_from_a_mark_up_to_the_last_complete_line(tmp_path: Path) -> None:
    log = AuditLog(tmp_path / "audit.jsonl")
    assert log.mark() == 0
    log.path.write_text(event("a", "create", "jobs") + "\n")
    mark = log.mark()
    with open(log.path, "a") as out:
        out.write(event("b", "create", "jobs") + "\n" + event("c", "create", "jobs")[:40])
    assert [w.user for w in log.read_since(0)] == ["a", "b"]
    assert [w.user for w in log.read_since(mark)] == ["b"]
    log.path.write_text("")
    with pytest.raises(RuntimeError, match="rotated"):
        log.read_since(mark)


def test_the_policy_logs_writes_but_not_leases_nor_reads() -> None:
    rules = POLICY["rules"]
    assert rules[0]["level"] == "None" and rules[0]["resources"][0]["resources"] == ["leases"]
    assert rules[1] == {
        "level": "Metadata",
        "verbs": ["create", "update", "patch", "delete", "deletecollection"],
    }
    assert rules[-1] == {"level": "None"}
