"""The difference between two recorded spec versions of an Agent or Template, line by line."""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import yaml

LineKind = Literal["hunk", "added", "removed", "same"]


@dataclass(frozen=True)
class DiffLine:
    kind: LineKind
    text: str


def spec_lines(spec: Mapping[str, Any]) -> list[str]:
    """The spec as YAML with sorted keys, so that only real changes differ."""
    return yaml.safe_dump(dict(spec), sort_keys=True, default_flow_style=False).splitlines()


def spec_diff(old: Mapping[str, Any], new: Mapping[str, Any], context: int = 3) -> list[DiffLine]:
    """A unified diff of old → new; [] when they are equal."""
    lines = difflib.unified_diff(spec_lines(old), spec_lines(new), lineterm="", n=context)
    result = []
    for line in lines:
        if line.startswith(("---", "+++")):
            continue  # the file headers: the page names both versions itself
        kind: LineKind = (
            "hunk" if line.startswith("@@") else
            "added" if line.startswith("+") else
            "removed" if line.startswith("-") else "same"
        )  # fmt: skip
        result.append(DiffLine(kind, line))
    return result
