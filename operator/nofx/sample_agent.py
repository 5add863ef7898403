"""`nofx sample-agent`: the stand-in agent of the sample Agents, in the operator's own image.

It does no work: it prints what the operator gave its step (run, step, attempt, inputs, item)
and reports the outputs its Agent declares (`--outputs '{"key": "value"}'`) as its container's
termination message, which is where the operator reads a step's outputs (and, under the reserved
key nofx.usage, the tokens it spent per model, checked here as the operator will read them). So
the samples run on any cluster that can pull the operator's image. On the local control plane
kwok plays the kubelet and nothing runs; `manifests/samples/local/` copies the same `--outputs`
into the annotation kwok reports instead, so both places report the same thing.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from nofx.planner.tokens import UsageProblem, take_usage

TERMINATION_LOG = "/dev/termination-log"  # the container's default terminationMessagePath
MAX_OUTPUT_BYTES = 4096  # what the operator accepts as a step's outputs
MAX_OUTPUT_KEYS = 32


class SampleAgentError(Exception):
    """Bad arguments or environment: the step fails with this message."""


def parse_outputs(text: str) -> dict[str, Any]:
    try:
        outputs = json.loads(text)
    except json.JSONDecodeError as error:
        raise SampleAgentError(f"--outputs is not JSON: {error}") from error
    if not isinstance(outputs, dict):
        raise SampleAgentError("--outputs must be a JSON object")
    try:
        take_usage(outputs)  # the tokens it reports, as the operator will read them
    except UsageProblem as problem:
        raise SampleAgentError(f"--outputs: {problem.message}") from problem
    encoded = json.dumps(outputs, separators=(",", ":"))
    if len(outputs) > MAX_OUTPUT_KEYS or len(encoded.encode()) > MAX_OUTPUT_BYTES:
        raise SampleAgentError(
            f"--outputs must have at most {MAX_OUTPUT_KEYS} keys and {MAX_OUTPUT_BYTES} bytes"
        )
    return outputs


def step_context(environ: Mapping[str, str]) -> dict[str, Any]:
    """What the operator put in the step's environment (see builders/job.py)."""
    try:
        inputs = json.loads(environ.get("NOFX_INPUTS") or "{}")
    except json.JSONDecodeError as error:
        raise SampleAgentError(f"NOFX_INPUTS is not JSON: {error}") from error
    context: dict[str, Any] = {
        "run": environ.get("NOFX_RUN", ""),
        "step": environ.get("NOFX_STEP", ""),
        "attempt": environ.get("NOFX_ATTEMPT", ""),
        "inputs": inputs,
    }
    if "NOFX_INDEX" in environ:
        context["index"] = int(environ["NOFX_INDEX"])
        context["item"] = json.loads(environ.get("NOFX_ITEM") or "null")
    return context


def run(outputs_text: str, termination_log: Path, environ: Mapping[str, str]) -> dict[str, Any]:
    """Logs the step's context, writes the declared outputs, returns them."""
    outputs = parse_outputs(outputs_text)
    print(json.dumps({"sampleAgent": step_context(environ), "outputs": outputs}), flush=True)
    termination_log.write_text(json.dumps(outputs, separators=(",", ":")))
    return outputs


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--outputs",
        default="{}",
        help="the step's outputs, a JSON object (at most 32 keys and 4096 bytes)",
    )
    parser.add_argument(
        "--termination-log",
        type=Path,
        default=Path(os.environ.get("NOFX_TERMINATION_LOG", TERMINATION_LOG)),
        help=f"where the outputs go (default: $NOFX_TERMINATION_LOG or {TERMINATION_LOG})",
    )


def main(args: argparse.Namespace) -> int:
    try:
        run(args.outputs, args.termination_log, os.environ)
    except SampleAgentError as error:
        print(f"nofx sample-agent: {error}", file=sys.stderr)
        # The operator shows the termination message of a failed attempt too.
        with contextlib.suppress(OSError):
            args.termination_log.write_text(str(error))
        return 2
    return 0
