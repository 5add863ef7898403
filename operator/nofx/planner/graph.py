"""The order in which one pass moves a plan's steps: each step after everything it depends on,
so a change upstream (a success, a skip) is seen downstream in the same decision."""

from __future__ import annotations

from collections.abc import Sequence

from nofx.api.template import Step


def execution_order(steps: Sequence[Step]) -> list[Step]:
    """The steps in declaration order, except that each comes after its dependsOn (which are
    moved up just before it). Pinning refused plans with cycles; one here is a bug."""
    by_name = {step.name: step for step in steps}
    ordered: list[Step] = []
    placed: set[str] = set()

    def place(step: Step, path: tuple[str, ...]) -> None:
        if step.name in placed:
            return
        if step.name in path:
            raise ValueError(f"steps depend on each other: {' → '.join([*path, step.name])}")
        for name in step.depends_on or []:
            if name in by_name:  # a finally step may depend on main steps, done already
                place(by_name[name], (*path, step.name))
        placed.add(step.name)
        ordered.append(step)

    for step in steps:
        place(step, ())
    return ordered
