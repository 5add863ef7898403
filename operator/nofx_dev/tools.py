"""Where the pinned control-plane binaries are: built once by tools/build.sh into a cache."""

from __future__ import annotations

import functools
import os
import subprocess
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]


@functools.cache
def tools_bin_dir() -> Path:
    """NOFX_TOOLS_BIN if set, else whatever tools/build.sh reports (building on a cold cache)."""
    configured = os.environ.get("NOFX_TOOLS_BIN")
    if configured:
        return Path(configured)
    build_script = REPO_ROOT / "tools" / "build.sh"
    if not build_script.exists():
        raise RuntimeError("set NOFX_TOOLS_BIN: tools/build.sh is only in a source checkout")
    out = subprocess.run(
        ["bash", str(build_script)], check=True, stdout=subprocess.PIPE, text=True
    ).stdout
    return Path(out.strip().splitlines()[-1])


def tool_path(name: str) -> Path:
    path = tools_bin_dir() / name
    if not path.exists():
        raise RuntimeError(f"{name} is missing from {path.parent}; run tools/build.sh")
    return path
