"""A throwaway PostgreSQL server for the tests: initdb + pg_ctl in a temp dir, Unix socket only.

Debian's ``postgresql`` package puts its programs in /usr/lib/postgresql/<major>/bin (only some on
PATH); ``.ci/run`` installs it when ``initdb`` is missing. initdb refuses to run as root
("cannot be run as root"), and CI runs as root: then the server runs as ``nobody``, in a
directory that user owns. It listens on no TCP port (``listen_addresses=''``), only on a socket in
its own directory, with trust authentication: nothing outside this machine's users can reach it.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

__all__ = ["PostgresServer", "find_bin"]

SUPERUSER = "smtp_oauth"


def find_bin() -> Path | None:
    """The directory holding initdb, pg_ctl and postgres, or None when PostgreSQL is not installed."""
    found = shutil.which("initdb")
    if found:
        real = Path(os.path.realpath(found)).parent
        if (real / "pg_ctl").exists():
            return real
    for candidate in sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True):
        if (Path(candidate) / "initdb").exists():
            return Path(candidate)
    return None


@dataclass
class PostgresServer:
    """One running server; ``url(dbname)`` names a database on it."""

    bin_dir: Path
    directory: Path
    run_as: str | None  # the unprivileged user the server runs as when we are root
    durable: bool = False  # fsync on (benchmarks); tests run without it

    @classmethod
    def start(cls, bin_dir: Path, *, durable: bool = False) -> PostgresServer:
        directory = Path(tempfile.mkdtemp(prefix="smtp-oauth-pg-"))
        run_as = None
        if os.geteuid() == 0:
            run_as = "nobody"
            entry = pwd.getpwnam(run_as)
            # The server's user must own it; others (root: the tests) only traverse to the socket.
            os.chmod(directory, 0o755)  # noqa: S103
            os.chown(directory, entry.pw_uid, entry.pw_gid)
        server = cls(bin_dir, directory, run_as, durable)
        server._run(
            "initdb", "-D", str(server.data), "-U", SUPERUSER, "--auth=trust", "--no-sync",
            "--encoding=UTF8", "--locale=C",
        )  # fmt: skip
        server.pg_ctl_start()
        return server

    @property
    def data(self) -> Path:
        return self.directory / "data"

    @property
    def socket_dir(self) -> Path:
        return self.directory

    def url(self, dbname: str = "postgres") -> str:
        return f"postgresql://{SUPERUSER}@/{dbname}?host={self.socket_dir}"

    def _run(self, program: str, *args: str) -> None:
        subprocess.run(
            [str(self.bin_dir / program), *args],
            check=True,
            capture_output=True,
            user=self.run_as,
            cwd=self.directory,
            timeout=120,
        )

    def pg_ctl_start(self) -> None:
        """Start (or start again) the server, waiting until it accepts connections."""
        options = (
            f"-c listen_addresses='' -c unix_socket_directories='{self.socket_dir}' "
            f"-c fsync={'on' if self.durable else 'off'} -c max_connections=200 -c shared_buffers=32MB"
        )
        self._run(
            "pg_ctl", "-D", str(self.data), "-o", options, "-l", str(self.directory / "log"), "-w", "start"
        )

    def pg_ctl_stop(self, mode: str = "fast") -> None:
        self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "stop")

    def create_database(self, name: str) -> str:
        """A new empty database; its URL."""
        import psycopg

        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')  # our own test names, never user input
        return self.url(name)

    def close(self) -> None:
        try:
            self.pg_ctl_stop("immediate")
        except subprocess.CalledProcessError:
            pass  # already stopped
        finally:
            shutil.rmtree(self.directory, ignore_errors=True)
