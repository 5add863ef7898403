"""A real Postgres server in a directory of its own, run as an unprivileged user."""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import signal
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import psycopg

from nofx_dev.processes import ManagedProcess, free_port, wait_until

SUPERUSER = "nofx"
DATABASE = "nofx"


def _bin_dir() -> Path:
    configured = os.environ.get("NOFX_PG_BIN")
    if configured:
        return Path(configured)
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(p.split("/")[4]))
    if candidates:
        return Path(candidates[-1])
    on_path = shutil.which("initdb")
    if on_path:
        return Path(on_path).parent
    raise RuntimeError("Postgres not found: install Debian's postgresql package or set NOFX_PG_BIN")


def _server_user() -> str | None:
    """initdb refuses to run as root, so root runs the server as an unprivileged account."""
    if os.geteuid() != 0:
        return None
    for name in (os.environ.get("NOFX_PG_USER"), "postgres", "nobody"):
        if name:
            try:
                pwd.getpwnam(name)
                return name
            except KeyError:
                continue
    raise RuntimeError("running as root and no unprivileged user for Postgres (set NOFX_PG_USER)")


@dataclass
class PostgresServer:
    """One server. start() after stop() restarts it on the same port with the same data."""

    directory: Path
    settings: dict[str, str] = field(default_factory=dict)
    port: int = 0
    process: ManagedProcess | None = None

    @property
    def dsn(self) -> str:
        return f"postgresql://{SUPERUSER}@127.0.0.1:{self.port}/{DATABASE}"

    @property
    def data_dir(self) -> Path:
        return self.directory / "data"

    def start(self, timeout: float = 60.0) -> None:
        user = _server_user()
        if not self.port:
            self.port = free_port()
        fresh = not (self.data_dir / "PG_VERSION").exists()
        if fresh:
            self._initdb(user)
        settings = {
            "listen_addresses": "127.0.0.1",
            "port": str(self.port),
            "unix_socket_directories": str(self.directory),
            "wal_level": "logical",
            "max_replication_slots": "20",
            "max_wal_senders": "20",
            "max_connections": "200",
            # Test servers: speed over durability across a power loss.
            "fsync": "off",
            "synchronous_commit": "off",
            "full_page_writes": "off",
            **self.settings,
        }
        argv = [str(_bin_dir() / "postgres"), "-D", str(self.data_dir)]
        for key, value in settings.items():
            argv += ["-c", f"{key}={value}"]
        # SIGINT is Postgres' fast shutdown; SIGTERM would wait for every client to leave.
        self.process = ManagedProcess(
            "postgres", argv, self.directory / "postgres.log", user=user, stop_signal=signal.SIGINT
        )
        self.process.start()
        wait_until(self._accepts_connections, timeout, f"Postgres on port {self.port}")
        if fresh:
            with psycopg.connect(self._dsn_for("postgres"), autocommit=True) as conn:
                conn.execute(f'CREATE DATABASE "{DATABASE}"')

    def _initdb(self, user: str | None) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        if user:
            account = pwd.getpwnam(user)
            os.chown(self.directory, account.pw_uid, account.pw_gid)
            parent = self.directory.parent
            parent.chmod(parent.stat().st_mode | 0o711)  # let the server user reach its directory
        initdb = subprocess.run(
            [
                str(_bin_dir() / "initdb"),
                "-D",
                str(self.data_dir),
                "-U",
                SUPERUSER,
                "--auth=trust",
                "--encoding=UTF8",
                "--locale=C.UTF-8",
                "--no-sync",
                "--no-instructions",
            ],
            user=user,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        if initdb.returncode != 0:
            raise RuntimeError(
                f"initdb failed for {self.data_dir} (as user {user or 'current'}; every parent "
                f"directory must be reachable by that user): {initdb.stderr.decode().strip()}"
            )

    def _dsn_for(self, database: str) -> str:
        return f"postgresql://{SUPERUSER}@127.0.0.1:{self.port}/{database}"

    def _accepts_connections(self) -> bool:
        assert self.process is not None
        self.process.check_alive()
        try:
            psycopg.connect(self._dsn_for("postgres"), connect_timeout=1).close()
        except psycopg.OperationalError:
            return False
        return True

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop(timeout=30)
            self.process = None
