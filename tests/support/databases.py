"""Throwaway PostgreSQL and MariaDB servers for the stored-procedure tests.

Each server lives in its own temporary directory (data, unix socket, log), listens on a free loopback port and
is stopped and removed at the end of the session. The binaries are required, not optional: a missing server
fails the tests with the command that installs it, because a silently skipped database test proves nothing.

PostgreSQL refuses to run as root, so when the tests run as root (CI) the cluster runs as the ``postgres``
system user (created by the Debian package); MariaDB runs with ``--user=root``.
"""

from __future__ import annotations

import configparser
import contextlib
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from tests.support.rig import free_port

PG_BIN_DIRS = [Path(p) for p in sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True)]
MARIADB_SBIN = ("/usr/sbin", "/usr/bin", "/usr/local/sbin", "/usr/local/bin")
BOOTSTRAP_HINT = "run scripts/bootstrap as root (it installs postgresql, mariadb-server, unixodbc and the ODBC drivers)"
DB_NAME = "his"
DB_USER = "his_bridge"
DB_PASSWORD = "his-bridge-test"


class DatabaseUnavailable(RuntimeError):
    """A test database cannot be started; the message says what to install."""


def odbc_driver(*candidates: str) -> str:
    """The first ODBC driver name registered in odbcinst.ini among ``candidates``."""
    parser = configparser.ConfigParser(interpolation=None, strict=False)
    for path in ("/etc/odbcinst.ini", os.path.expanduser("~/.odbcinst.ini")):
        with contextlib.suppress(OSError, configparser.Error):
            parser.read(path)
    for name in candidates:
        if parser.has_section(name):
            return name
    raise DatabaseUnavailable(f"no ODBC driver {' or '.join(candidates)} in /etc/odbcinst.ini: {BOOTSTRAP_HINT}")


def _wait_for_port(port: int, process: subprocess.Popen[bytes] | None, log: Path, deadline_s: float = 60) -> None:
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise DatabaseUnavailable(f"the server exited ({process.returncode}): {_tail(log)}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return
        time.sleep(0.05)
    raise DatabaseUnavailable(f"the server did not listen on port {port} in time: {_tail(log)}")


def _tail(log: Path) -> str:
    try:
        return log.read_text(errors="replace")[-2000:]
    except OSError:
        return "(no log)"


def _run(args: list[str], *, user: str | None = None, what: str) -> None:
    result = subprocess.run(args, capture_output=True, text=True, user=user, check=False)
    if result.returncode != 0:
        raise DatabaseUnavailable(f"{what} failed ({result.returncode}): {result.stderr or result.stdout}")


@dataclass
class TestDatabase:
    dialect: str
    port: int
    connection: str
    """ODBC connection string of the bridge's (non-superuser) account."""
    admin_connection: str
    """ODBC connection string of a superuser, for the installer and for killing sessions."""
    tmpdir: Path


class PostgresServer:
    """``initdb`` into a temporary directory and ``pg_ctl start`` on a free port, socket in that directory."""

    def __init__(self) -> None:
        self.bin = next((d for d in PG_BIN_DIRS if (d / "initdb").exists()), None)
        if self.bin is None:
            raise DatabaseUnavailable(f"PostgreSQL server binaries (initdb, pg_ctl) not found: {BOOTSTRAP_HINT}")
        self.driver = odbc_driver("PostgreSQL Unicode", "PostgreSQL")
        self.user = "postgres" if os.geteuid() == 0 else None
        if self.user is not None:
            try:
                self.owner = pwd.getpwnam(self.user)
            except KeyError:
                raise DatabaseUnavailable(f"running as root needs a 'postgres' system user: {BOOTSTRAP_HINT}") from None
        self.tmpdir = Path(tempfile.mkdtemp(prefix="his-pg-"))
        self.port = free_port()
        self.data = self.tmpdir / "data"
        self.log = self.tmpdir / "postgres.log"

    def start(self) -> TestDatabase:
        if self.user is not None:
            os.chown(self.tmpdir, self.owner.pw_uid, self.owner.pw_gid)
        _run(
            [str(self.bin / "initdb"), "-D", str(self.data), "-U", "postgres", "-A", "trust", "-E", "UTF8",
             "--locale=C", "--no-sync"],
            user=self.user,
            what="initdb",
        )  # fmt: skip
        options = f"-p {self.port} -k {self.tmpdir} -c listen_addresses=127.0.0.1 -c fsync=off -c full_page_writes=off"
        _run(
            [str(self.bin / "pg_ctl"), "-D", str(self.data), "-l", str(self.log), "-o", options, "-w", "start"],
            user=self.user,
            what="pg_ctl start",
        )
        _wait_for_port(self.port, None, self.log)
        base = f"Driver={{{self.driver}}};Server=127.0.0.1;Port={self.port};"
        admin = base + "Database=postgres;Uid=postgres;Pwd=;"
        import pyodbc

        with contextlib.closing(pyodbc.connect(admin, autocommit=True)) as db:
            db.execute(f"CREATE ROLE {DB_USER} LOGIN PASSWORD '{DB_PASSWORD}'")
            db.execute(f"CREATE DATABASE {DB_NAME} OWNER {DB_USER}")
        return TestDatabase(
            "postgresql",
            self.port,
            base + f"Database={DB_NAME};Uid={DB_USER};Pwd={DB_PASSWORD};",
            base + f"Database={DB_NAME};Uid=postgres;Pwd=;",
            self.tmpdir,
        )

    def stop(self) -> None:
        with contextlib.suppress(Exception):
            subprocess.run(
                [str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "-w", "stop"],
                capture_output=True,
                user=self.user,
                check=False,
                timeout=30,
            )
        shutil.rmtree(self.tmpdir, ignore_errors=True)


class MariadbServer:
    """``mariadb-install-db`` into a temporary directory and ``mariadbd`` on a free port and socket."""

    def __init__(self) -> None:
        self.install_db = shutil.which("mariadb-install-db") or shutil.which("mysql_install_db")
        search = os.pathsep.join([*MARIADB_SBIN, os.environ.get("PATH", "")])
        self.server = shutil.which("mariadbd", path=search) or shutil.which("mysqld", path=search)
        if self.install_db is None or self.server is None:
            missing = "MariaDB server binaries (mariadb-install-db, mariadbd) not found"
            raise DatabaseUnavailable(f"{missing}: {BOOTSTRAP_HINT}")
        self.driver = odbc_driver("MariaDB Unicode", "MariaDB ODBC 3.1 Driver", "MariaDB")
        self.os_user = pwd.getpwuid(os.geteuid()).pw_name
        self.tmpdir = Path(tempfile.mkdtemp(prefix="his-mariadb-"))
        self.port = free_port()
        self.data = self.tmpdir / "data"
        self.socket = self.tmpdir / "mariadb.sock"
        self.log = self.tmpdir / "mariadb.log"
        self.process: subprocess.Popen[bytes] | None = None

    def _options(self) -> list[str]:
        return [
            "--no-defaults",
            f"--datadir={self.data}",
            f"--user={self.os_user}",
        ]

    def start(self) -> TestDatabase:
        _run(
            [self.install_db, *self._options(), "--auth-root-authentication-method=normal", "--skip-test-db"],
            what="mariadb-install-db",
        )
        with self.log.open("wb") as log:
            self.process = subprocess.Popen(
                [
                    self.server,
                    *self._options(),
                    f"--port={self.port}",
                    "--bind-address=127.0.0.1",
                    f"--socket={self.socket}",
                    f"--pid-file={self.tmpdir / 'mariadb.pid'}",
                    f"--log-error={self.log}",
                    "--skip-log-bin",
                    "--skip-name-resolve",
                    "--innodb-flush-log-at-trx-commit=0",
                    "--innodb-buffer-pool-size=32M",
                    "--innodb-lock-wait-timeout=5",
                    "--character-set-server=utf8mb4",
                    "--collation-server=utf8mb4_bin",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        _wait_for_port(self.port, self.process, self.log)
        import pyodbc

        local = f"Driver={{{self.driver}}};Socket={self.socket};Uid=root;Pwd=;"
        with contextlib.closing(pyodbc.connect(local, autocommit=True)) as db:
            db.execute(f"CREATE DATABASE {DB_NAME} CHARACTER SET utf8mb4 COLLATE utf8mb4_bin")
            for host in ("127.0.0.1", "localhost"):
                db.execute(f"CREATE USER '{DB_USER}'@'{host}' IDENTIFIED BY '{DB_PASSWORD}'")
                db.execute(f"GRANT ALL ON {DB_NAME}.* TO '{DB_USER}'@'{host}'")
                db.execute(f"CREATE USER 'his_admin'@'{host}' IDENTIFIED BY '{DB_PASSWORD}'")
                db.execute(f"GRANT ALL ON *.* TO 'his_admin'@'{host}' WITH GRANT OPTION")
        base = f"Driver={{{self.driver}}};Server=127.0.0.1;Port={self.port};Database={DB_NAME};"
        return TestDatabase(
            "mariadb",
            self.port,
            base + f"Uid={DB_USER};Pwd={DB_PASSWORD};",
            base + f"Uid=his_admin;Pwd={DB_PASSWORD};",
            self.tmpdir,
        )

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        shutil.rmtree(self.tmpdir, ignore_errors=True)
