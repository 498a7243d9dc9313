"""A throwaway PostgreSQL server for tests and benchmarks: `initdb` + `pg_ctl` on a temporary
directory and a free loopback port, stopped and deleted afterwards. Never a mock.

PostgreSQL refuses to run as root; as root the server runs as the `postgres` user (Debian's
package creates it; .ci/run installs the package where the binaries are missing).

    with postgres_server() as url:   # postgresql://ragserve@127.0.0.1:<port>/ragserve
        ...
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from bench.latency import free_port

SEARCH_PATHS = ["/usr/lib/postgresql/15/bin", "/usr/lib/postgresql/16/bin", "/usr/lib/postgresql/17/bin"]
USER = "ragserve"


def pg_bin(name: str) -> str:
    """The path of a PostgreSQL program (on PATH, or where Debian puts it)."""
    found = shutil.which(name) or next((f"{d}/{name}" for d in SEARCH_PATHS if os.access(f"{d}/{name}", os.X_OK)), None)
    if found is None:
        raise RuntimeError(f"{name} not found: install PostgreSQL (Debian: apt-get install postgresql)")
    return found


def available() -> bool:
    try:
        pg_bin("initdb")
        pg_bin("pg_ctl")
    except RuntimeError:
        return False
    return True


def _as_server_user(command: list[str]) -> list[str]:
    return ["runuser", "-u", "postgres", "--", *command] if os.geteuid() == 0 else command


class PostgresServer:
    def __init__(self, root: Path, port: int) -> None:
        self.root = root
        self.port = port
        self.data = root / "data"
        self.url = f"postgresql://{USER}@127.0.0.1:{port}/{USER}"
        self._databases = 0

    def start(self) -> None:
        if os.geteuid() == 0:
            shutil.chown(self.root, "postgres")
        subprocess.run(
            _as_server_user(
                [pg_bin("initdb"), "-D", str(self.data), "-A", "trust", "-U", USER, "-E", "UTF8", "--no-sync"]
            ),
            check=True,
            capture_output=True,
        )
        self.start_again()
        subprocess.run(
            [pg_bin("createdb"), "-h", "127.0.0.1", "-p", str(self.port), "-U", USER, USER],
            check=True,
            capture_output=True,
        )

    def start_again(self) -> None:
        """Start the server on its existing data directory (after `stop`)."""
        run = _as_server_user
        options = f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200"
        subprocess.run(
            run([pg_bin("pg_ctl"), "-D", str(self.data), "-o", options, "-l", str(self.root / "log"), "-w", "start"]),
            check=True,
            capture_output=True,
        )

    def stop(self) -> None:
        subprocess.run(
            _as_server_user([pg_bin("pg_ctl"), "-D", str(self.data), "-m", "immediate", "stop"]),
            capture_output=True,
        )

    def new_database(self, encoding: str | None = None) -> str:
        """A new, empty database on this server (in `encoding`, default the server's); its URL."""
        import psycopg

        self._databases += 1
        name = f"ragserve_{self._databases}"
        options = f" ENCODING '{encoding}' LC_COLLATE 'C' LC_CTYPE 'C' TEMPLATE template0" if encoding else ""
        with psycopg.connect(self.url, autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {name}{options}")
        return f"postgresql://{USER}@127.0.0.1:{self.port}/{name}"


@contextmanager
def postgres_server() -> Iterator[PostgresServer]:
    root = Path(tempfile.mkdtemp(prefix="ragserve-pg-"))
    server = PostgresServer(root, free_port())
    try:
        server.start()
        yield server
    finally:
        server.stop()
        shutil.rmtree(root, ignore_errors=True)
