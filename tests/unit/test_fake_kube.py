"""The fake API server keeps the contracts of nofx.kube.Kube that the reconciler relies on."""

from __future__ import annotations

import pytest

from nofx.api_errors import Conflict, Rejected
from tests.unit.fake_kube import FakeKube, merge_patch


def run(name: str = "r1") -> dict[str, object]:
    return {"metadata": {"name": name, "namespace": "ns"}, "spec": {}}


def test_merge_patch_deletes_null_keys_and_merges_objects() -> None:
    merged = merge_patch({"a": 1, "b": {"c": 2, "d": 3}, "e": [1]}, {"a": None, "b": {"c": None}})
    assert merged == {"b": {"d": 3}, "e": [1]}


def test_gone_is_none_and_existing_is_false() -> None:
    kube = FakeKube()
    assert kube.get("runs", "ns", "r1") is None
    assert kube.patch_status("runs", "ns", "r1", {"phase": "Running"}) is None
    assert kube.create("runs", "ns", run())
    assert not kube.create("runs", "ns", run())
    kube.delete_job("ns", "never-was")  # a 404 is not an error
    assert [name for name, _ in kube.calls] == [
        *("get", "patch_status"),
        *("create",) * 2,
        "delete_job",
    ]


def test_writes_bump_the_resource_version_and_a_stale_one_conflicts() -> None:
    kube = FakeKube()
    version = kube.put("runs", run())["metadata"]["resourceVersion"]
    stored = kube.patch_status("runs", "ns", "r1", {"phase": "Running"}, version)
    assert stored is not None and stored["metadata"]["resourceVersion"] != version
    with pytest.raises(Conflict):
        kube.patch_status("runs", "ns", "r1", {"phase": "Failed"}, version)
    assert kube.objects[("runs", "ns", "r1")]["status"] == {"phase": "Running"}


def test_failures_and_refusals_change_nothing() -> None:
    kube = FakeKube()
    version = kube.put("runs", run())["metadata"]["resourceVersion"]
    kube.fail_next("get", 2, TimeoutError("slow"))
    for _ in range(2):
        with pytest.raises(TimeoutError):
            kube.get("runs", "ns", "r1")
    assert kube.get("runs", "ns", "r1") is not None
    kube.refuse_status_over(20, http_status=413)
    with pytest.raises(Rejected) as refused:
        kube.patch_status("runs", "ns", "r1", {"message": "x" * 20})
    assert refused.value.too_large and refused.value.status == 413
    assert kube.objects[("runs", "ns", "r1")]["metadata"]["resourceVersion"] == version
    assert "status" not in kube.objects[("runs", "ns", "r1")]
