"""`python -m nofx_dev up|down|env`: the local control plane and Postgres for development.

`up` starts a supervisor in the background and returns once everything is ready, printing the
environment to use it; `down` stops the supervisor, which stops every server it started.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from nofx_dev.controlplane import ControlPlane
from nofx_dev.postgres import PostgresServer
from nofx_dev.processes import free_port, pid_alive, wait_until
from nofx_dev.tools import tools_bin_dir

DEFAULT_STATE_DIR = Path(os.environ.get("NOFX_DEV_DIR", "/tmp/nofx-dev"))


def _env_file(state_dir: Path) -> Path:
    return state_dir / "env.sh"


def _pid_file(state_dir: Path) -> Path:
    return state_dir / "supervisor.pid"


def _running_pid(state_dir: Path) -> int | None:
    try:
        pid = int(_pid_file(state_dir).read_text())
    except (FileNotFoundError, ValueError):
        return None
    return pid if pid_alive(pid) else None


def environment(control_plane: ControlPlane, postgres: PostgresServer) -> str:
    """What `eval "$(make -s dev-env)"` sets: the cluster, the database, free ports for
    `nofx operator`, and `kubectl` (the pinned one) and `nofx` (the checkout's) on PATH."""
    path = f"{tools_bin_dir()}:{Path(sys.executable).parent}"
    return (
        f"export KUBECONFIG={control_plane.kubeconfig}\n"
        f"export NOFX_DATABASE_URL={postgres.dsn}\n"
        f"export NOFX_METRICS_PORT={free_port()} NOFX_HEALTH_PORT={free_port()}\n"
        f'export PATH="{path}:$PATH"\n'
    )


def serve(state_dir: Path, with_kueue: bool = False) -> None:
    """Runs in the foreground until SIGTERM or SIGINT, then stops everything in order."""
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    _pid_file(state_dir).write_text(str(os.getpid()))
    control_plane = ControlPlane(state_dir, kueue=with_kueue)
    postgres = PostgresServer(state_dir / "postgres")
    try:
        started = time.monotonic()
        # One after the other, from this thread: children die with the thread that started them.
        postgres.start()
        control_plane.start()
        _env_file(state_dir).write_text(environment(control_plane, postgres))
        print(
            f"control plane ready in {control_plane.startup_seconds:.1f} s, everything in "
            f"{time.monotonic() - started:.1f} s",
            flush=True,
        )
        stop.wait()
    finally:
        _env_file(state_dir).unlink(missing_ok=True)
        postgres.stop()
        control_plane.stop()
        _pid_file(state_dir).unlink(missing_ok=True)


def up(state_dir: Path, timeout: float, with_kueue: bool = False) -> int:
    if _running_pid(state_dir) is None:
        shutil.rmtree(state_dir, ignore_errors=True)
        state_dir.mkdir(parents=True)
        log_path = state_dir / "supervisor.log"
        with open(log_path, "wb") as log:
            supervisor = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "nofx_dev",
                    "serve",
                    "--state-dir",
                    str(state_dir),
                    *(["--with-kueue"] if with_kueue else []),
                ],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # outlives this command, not the servers it starts
            )

        def ready() -> bool:
            if supervisor.poll() is not None:
                raise RuntimeError(f"the supervisor failed:\n{log_path.read_text()}")
            return _env_file(state_dir).exists()

        wait_until(ready, timeout, "the local control plane and Postgres")
        print((state_dir / "supervisor.log").read_text().strip())
    print(f"# logs: {state_dir}/logs; stop with: make dev-down")
    print('# in each terminal: eval "$(make -s dev-env)"')
    print(_env_file(state_dir).read_text().strip())
    return 0


def down(state_dir: Path, timeout: float) -> int:
    pid = _running_pid(state_dir)
    if pid is None:
        print("nothing running")
        return 0
    os.kill(pid, signal.SIGTERM)
    wait_until(lambda: not pid_alive(pid), timeout, f"the supervisor (pid {pid}) to stop")
    print("stopped the control plane and Postgres")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m nofx_dev", description=__doc__)
    parser.add_argument("command", choices=["up", "down", "env", "serve"])
    parser.add_argument("--state-dir", type=Path, default=DEFAULT_STATE_DIR)
    parser.add_argument(
        "--timeout", type=float, default=1800.0, help="seconds (a cold build is slow)"
    )
    parser.add_argument(
        "--with-kueue",
        action="store_true",
        help="also start Kueue (its CRDs and webhooks); run the operator with --kueue",
    )
    args = parser.parse_args()
    if args.command == "serve":
        serve(args.state_dir, args.with_kueue)
        return 0
    if args.command == "up":
        return up(args.state_dir, args.timeout, args.with_kueue)
    if args.command == "down":
        return down(args.state_dir, args.timeout)
    env = _env_file(args.state_dir)
    if not env.exists():
        print("not running: make dev-up", file=sys.stderr)
        return 1
    print(env.read_text().strip())
    return 0


if __name__ == "__main__":
    sys.exit(main())
