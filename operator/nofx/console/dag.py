"""A Run's steps as a Graphviz graph: the plan it pinned (or its inline plan before it started),
each node coloured by its step's phase and linked to the step's row (or its child Run), laid out
by `dot` on the server and embedded as SVG."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import graphviz

# Light fills under black text (contrast above 4.5:1); the phase is also written in each node,
# so the colour is never the only signal.
PHASE_COLOURS = {
    "Succeeded": "#b7e4c7",
    "Failed": "#f4b4b4",
    "Running": "#a9d1f7",
    "Waiting": "#ffe08a",
    "Pending": "#e4e4e4",
    "Skipped": "#f5f5f5",
    "Cancelled": "#d9c8e8",
}
# The phase of a forEach step is that of its most telling item.
PHASE_PRECEDENCE = ["Failed", "Running", "Waiting", "Pending", "Cancelled", "Succeeded", "Skipped"]


def plan(run: Mapping[str, Any]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The Run's (steps, finally steps): as pinned when it started, else its inline plan."""
    pinned = ((run.get("status") or {}).get("pinned") or {}).get("template") or {}
    source = pinned.get("spec") or run.get("spec") or {}
    return list(source.get("steps") or []), list(source.get("finally") or [])


def step_phases(run: Mapping[str, Any]) -> dict[str, tuple[str, str]]:
    """(phase, reason) per step name; forEach items folded into one."""
    entries: dict[str, list[Mapping[str, Any]]] = {}
    for entry in (run.get("status") or {}).get("steps") or []:
        entries.setdefault(entry["name"], []).append(entry)
    phases = {}
    for name, items in entries.items():
        telling = min(items, key=lambda e: PHASE_PRECEDENCE.index(e.get("phase", "Pending")))
        phases[name] = (telling.get("phase", "Pending"), telling.get("reason") or "")
    return phases


def dot_source(run: Mapping[str, Any], link: Callable[[Mapping[str, Any]], str]) -> str:
    """The graph in the dot language; `link(step)` is the URL a node leads to."""
    steps, finally_steps = plan(run)
    phases = step_phases(run)
    name = (run.get("metadata") or {}).get("name", "")
    graph = graphviz.Digraph(name=f"DAG of Run {name}")
    graph.attr(rankdir="LR", bgcolor="transparent", fontname="sans-serif")
    graph.attr("node", shape="box", style="rounded,filled", fontname="sans-serif", fontsize="11")
    graph.attr("edge", color="#333333")
    for step in [*steps, *finally_steps]:
        _node(graph, step, phases.get(step["name"], ("Pending", "")), link(step))
    for step in steps:
        for upstream in step.get("dependsOn") or []:
            graph.edge(upstream, step["name"])
    # Finally steps run once every main step is done: drawn after the main steps' ends.
    ends = _sinks(steps)
    for step in finally_steps:
        for end in ends:
            graph.edge(end, step["name"], style="dashed")
    return graph.source


def _node(
    graph: graphviz.Digraph, step: Mapping[str, Any], state: tuple[str, str], url: str
) -> None:
    phase, reason = state
    label = f"{step['name']}\\n{phase}"  # \\n is a line break to dot
    if reason == "AwaitingApproval":
        label += " (approval)"
    if step.get("forEach"):
        label += "\\nfor each item"
    graph.node(
        step["name"],
        label=label,
        fillcolor=PHASE_COLOURS.get(phase, "#ffffff"),
        color="#333333",
        style="rounded,filled,dashed" if phase == "Skipped" else "rounded,filled",
        href=url,
        tooltip=f"{step['name']}: {phase}" + (f" ({reason})" if reason else ""),
    )


def _sinks(steps: Sequence[Mapping[str, Any]]) -> list[str]:
    """Steps nothing depends on."""
    upstream = {name for step in steps for name in step.get("dependsOn") or []}
    return [step["name"] for step in steps if step["name"] not in upstream]


def render_svg(source: str, label: str) -> str:
    """The graph laid out by Graphviz's `dot`, as an <svg> element to put inline in a page (its
    links then work and its text can be searched), labelled for screen readers."""
    svg = graphviz.Source(source).pipe(format="svg", encoding="utf-8")
    svg = svg[svg.index("<svg") :]
    return svg.replace("<svg", f'<svg role="img" aria-label="{_attribute(label)}"', 1)


def _attribute(text: str) -> str:
    return text.replace("&", "&amp;").replace('"', "&quot;").replace("<", "&lt;")
