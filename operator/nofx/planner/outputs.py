"""A step's outputs: its container's termination message, parsed and bounded; the outcome of a
finished attempt; the joined outputs of a forEach step."""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from typing import Any

from nofx.api.reasons import Reason
from nofx.planner.facts import JobObservation

MAX_OUTPUT_BYTES = 4096  # the kubelet's own limit on a termination message
MAX_OUTPUT_KEYS = 32  # status.steps[].outputs maxProperties
MAX_OUTPUT_NESTING = 32  # deeper JSON would make every later reader recurse that deep


def outcome(
    observation: JobObservation, timeout: str | None
) -> tuple[dict[str, Any], str | None, Reason | None]:
    """(outputs, None, None) for a good attempt, or ({}, why it failed, typed reason)."""
    if observation.state == "Missing":
        return {}, f"Job {observation.name} disappeared before it finished", None
    if observation.reason == Reason.JOB_REJECTED:
        message = f"the API server refused Job {observation.name}: {observation.message}"
        return {}, message, Reason.JOB_REJECTED
    if observation.state == "Failed":
        if observation.reason == "DeadlineExceeded":
            return {}, f"timed out after {timeout}", None
        detail = (
            f"exit code {observation.exit_code}"
            if observation.exit_code is not None
            else (observation.reason or "failed")
        )
        message = (observation.termination_message or observation.message or "").strip()
        return {}, f"{detail}: {message[:500]}" if message else detail, None
    if not observation.pod_read:
        # Outputs live in the Pod's termination message; without it they are unknown.
        message = f"Job {observation.name} succeeded, but its Pod is gone with its outputs"
        return {}, message, Reason.OUTPUTS_LOST
    outputs, problem = parse_outputs(observation.termination_message)
    return outputs, problem, None


def parse_outputs(message: str | None) -> tuple[dict[str, Any], str | None]:
    """A step's outputs are its termination message: empty, or a JSON object."""
    text = (message or "").strip()
    if not text:
        return {}, None
    if len(text.encode()) > MAX_OUTPUT_BYTES:
        return {}, f"outputs are larger than {MAX_OUTPUT_BYTES} bytes"
    try:
        outputs = json.loads(text)
    except json.JSONDecodeError as error:
        return (
            {},
            f"outputs are not valid JSON ({error.msg} at character {error.pos}): {text[:200]}",
        )
    except RecursionError:  # nested deeper than the parser goes
        return {}, f"outputs are nested more than {MAX_OUTPUT_NESTING} levels deep"
    if _nesting(outputs) > MAX_OUTPUT_NESTING:
        return {}, f"outputs are nested more than {MAX_OUTPUT_NESTING} levels deep"
    if not isinstance(outputs, dict):
        return {}, f"outputs must be a JSON object, got {type(outputs).__name__}: {text[:200]}"
    if len(outputs) > MAX_OUTPUT_KEYS:
        return {}, f"outputs have {len(outputs)} keys, at most {MAX_OUTPUT_KEYS} are allowed"
    return outputs, None


def _nesting(value: Any) -> int:
    """How deeply lists and objects nest in a JSON value (a scalar is 0), without recursion."""
    deepest, stack = 0, [(value, 0)]
    while stack:
        current, depth = stack.pop()
        if isinstance(current, dict):
            current = list(current.values())
        if isinstance(current, list):
            deepest = max(deepest, depth + 1)
            stack.extend((child, depth + 1) for child in current)
    return deepest


class EmptyJoin(Mapping[str, Any]):
    """Outputs of a forEach step over no items: every key is an empty list."""

    def __getitem__(self, key: str) -> list[Any]:
        return []

    def __contains__(self, key: object) -> bool:
        return True

    def __iter__(self) -> Iterator[str]:
        return iter(())

    def __len__(self) -> int:
        return 0


EMPTY_JOIN = EmptyJoin()


def join_outputs(results: list[dict[str, Any]]) -> dict[str, Any]:
    """The outputs of a forEach step: every key any item reported, as a list with one entry
    per item (null where an item did not report it)."""
    keys = sorted({key for result in results for key in result})
    return {key: [result.get(key) for result in results] for key in keys}
