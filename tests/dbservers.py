"""Throwaway PostgreSQL and MariaDB servers for the store tests, started from Debian's packages.

Each server starts once per test session in its own temp folder, listens on 127.0.0.1 only, and
is stopped (its process group killed if it hangs) when the session ends. Every test that asks for
`postgres_url` / `mariadb_url` gets a database of its own, dropped afterwards, and connects as a
normal user with a password. Load the fixtures with `pytest_plugins = ("tests.dbservers",)`.

Missing server binaries skip the tests that need them, except under CI (the env var CI is set),
where they fail: .ci/run installs Debian's `postgresql` and `mariadb-server`.
"""

from __future__ import annotations

import atexit
import glob
import itertools
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import NoReturn

import pytest
from sqlalchemy.engine import URL

START_TIMEOUT = 60.0  # seconds a server may take to accept connections (a cold CI machine is slow)
STOP_TIMEOUT = 20.0  # seconds a clean shutdown may take before the process group is killed
POLL_INTERVAL = 0.05
APP_USER = "bot"  # the unprivileged account the stores connect as
_names = itertools.count(1)


class ServerUnavailable(Exception):
    """The server's binaries are not installed."""


def _os_user() -> str:
    """The account this process runs as (not $USER, which may say anything)."""
    return pwd.getpwuid(os.geteuid()).pw_name


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _missing(reason: str) -> NoReturn:
    """Skip a test that needs a missing server; in CI, fail it (.ci/run should have installed it)."""
    if os.environ.get("CI"):
        pytest.fail(f"{reason} (.ci/run installs Debian's postgresql and mariadb-server)")
    pytest.skip(f"{reason} (apt-get install postgresql mariadb-server)")


def _run(
    argv: Sequence[str],
    *,
    cwd: Path,
    user: str | None = None,
    env: dict[str, str] | None = None,
    stdin: str = "",
    hide: Sequence[str] = (),
) -> str:
    """Run a setup command (SQL goes in on stdin, so no password shows in `ps`); raises
    RuntimeError with its output, the `hide` strings (passwords) replaced by ***."""
    done = subprocess.run(
        list(argv),
        user=user,
        env={**os.environ, **(env or {})},
        cwd=cwd,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=START_TIMEOUT,
        check=False,
    )
    if done.returncode != 0:
        output = done.stderr.strip() or done.stdout.strip()
        for secret in hide:
            output = output.replace(secret, "***")
        raise RuntimeError(f"{Path(argv[0]).name} failed ({done.returncode}): {output}")
    return done.stdout


class DatabaseServer:
    """One server process in a temp folder: start, wait until it answers, make databases, stop."""

    name = "database"
    system_user = "root"  # the account the server runs as when the tests run as root

    def __init__(self) -> None:
        self.workdir = Path(tempfile.mkdtemp(prefix=f"bot-test-{self.name}-"))
        self.port = _free_port()
        self.password = secrets.token_urlsafe(16)  # APP_USER's
        self.admin_password = secrets.token_urlsafe(16)
        self.process: subprocess.Popen[bytes] | None = None
        # Servers refuse to run as root: as root the tests hand them their system account; as
        # anyone else the server simply runs as that user.
        self.run_as = self.system_user if os.geteuid() == 0 else None
        self._log = self.workdir / "server.log"

    # --- lifecycle ------------------------------------------------------------------------------

    def start(self) -> None:
        """Initialise the data folder, start the server and wait until it accepts logins."""
        self.own(self.workdir)
        self.workdir.chmod(0o700)
        self.initialise()
        with self._log.open("ab") as log:
            self.process = subprocess.Popen(
                self.server_argv(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.workdir,
                user=self.run_as,
                start_new_session=True,  # its own process group, so stop() can kill every child
            )
        atexit.register(self.stop)
        self._wait_until_ready()
        self.create_app_user()

    def _wait_until_ready(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        last = ""
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.process.returncode} at start: {self.log_tail()}")
            try:
                self.admin_sql("SELECT 1")
                return
            except RuntimeError as exc:
                last = str(exc)
            time.sleep(POLL_INTERVAL)
        raise RuntimeError(f"{self.name} did not accept connections within {START_TIMEOUT:.0f}s: {last}")

    def stop(self) -> None:
        """Shut the server down (kill its process group if it hangs) and delete its folder; idempotent."""
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            process.send_signal(self.stop_signal)
            try:
                process.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(STOP_TIMEOUT)
        shutil.rmtree(self.workdir, ignore_errors=True)

    def own(self, path: Path) -> None:
        """Give `path` to the account the server runs as."""
        if self.run_as is not None:
            shutil.chown(path, self.run_as, self.run_as)

    def log_tail(self, lines: int = 15) -> str:
        try:
            return " | ".join(self._log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    # --- per test -------------------------------------------------------------------------------

    def url(self, database: str) -> str:
        """The async SQLAlchemy URL of `database` for APP_USER, password included (never log it)."""
        raise NotImplementedError

    def create_database(self, database: str) -> str:
        raise NotImplementedError

    def drop_database(self, database: str) -> None:
        raise NotImplementedError

    # --- per server -----------------------------------------------------------------------------

    stop_signal = signal.SIGTERM

    def initialise(self) -> None:
        raise NotImplementedError

    def server_argv(self) -> list[str]:
        raise NotImplementedError

    def admin_sql(self, sql: str) -> str:
        raise NotImplementedError

    def create_app_user(self) -> None:
        raise NotImplementedError


def _postgres_bin() -> Path:
    """Debian keeps PostgreSQL's server programs in /usr/lib/postgresql/<version>/bin; newest wins."""
    for folder in sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(Path(p).parent.name), reverse=True):
        if (Path(folder) / "initdb").exists() and (Path(folder) / "postgres").exists():
            return Path(folder)
    initdb = shutil.which("initdb")
    if initdb and shutil.which("postgres"):
        return Path(initdb).parent
    raise ServerUnavailable("PostgreSQL is not installed (no initdb / postgres)")


class PostgresServer(DatabaseServer):
    """A PostgreSQL cluster run by the `postgres` account; logins over TCP need a password."""

    name = "postgresql"
    system_user = "postgres"
    stop_signal = signal.SIGINT  # "fast" shutdown: SIGTERM would wait for clients to leave

    def __init__(self) -> None:
        self.bin = _postgres_bin()
        psql = self.bin / "psql"
        self.psql = str(psql) if psql.exists() else shutil.which("psql") or "psql"
        super().__init__()

    def initialise(self) -> None:
        password_file = self.workdir / "pwfile"
        password_file.write_text(self.admin_password + "\n")
        self.own(password_file)
        password_file.chmod(0o600)
        try:
            _run(
                [
                    str(self.bin / "initdb"),
                    "--pgdata=data",
                    "--username=postgres",
                    f"--pwfile={password_file}",
                    "--auth-local=peer",
                    "--auth-host=scram-sha-256",
                    "--encoding=UTF8",
                    "--no-locale",
                    "--no-sync",
                ],
                user=self.run_as,
                cwd=self.workdir,
            )
        finally:
            password_file.unlink(missing_ok=True)
        (self.workdir / "sockets").mkdir()
        self.own(self.workdir / "sockets")

    def server_argv(self) -> list[str]:
        return [
            str(self.bin / "postgres"),
            "-D",
            "data",
            "-k",
            str(self.workdir / "sockets"),
            "-h",
            "127.0.0.1",
            "-p",
            str(self.port),
            # A throwaway cluster: durability is not wanted, speed is.
            "-c",
            "fsync=off",
            "-c",
            "synchronous_commit=off",
            "-c",
            "full_page_writes=off",
        ]

    def _psql_login(self) -> list[str]:
        login = ["-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", "-d", "postgres"]
        return [self.psql, "-X", "-q", "-v", "ON_ERROR_STOP=1", *login]

    def admin_sql(self, sql: str) -> str:
        return _run(
            self._psql_login(),
            env={"PGPASSWORD": self.admin_password, "PGCONNECT_TIMEOUT": "5"},
            cwd=self.workdir,
            stdin=sql,
            hide=(self.password, self.admin_password),
        )

    def create_app_user(self) -> None:
        self.admin_sql(f"CREATE ROLE {APP_USER} LOGIN PASSWORD '{self.password}'")

    def url(self, database: str) -> str:
        return URL.create(
            "postgresql+asyncpg", APP_USER, self.password, "127.0.0.1", self.port, database
        ).render_as_string(hide_password=False)

    def create_database(self, database: str) -> str:
        self.admin_sql(f'CREATE DATABASE "{database}" OWNER {APP_USER}')
        return self.url(database)

    def drop_database(self, database: str) -> None:
        self.admin_sql(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')


class MariadbServer(DatabaseServer):
    """A MariaDB server run as the `mysql` account, with its compiled-in defaults (latin1!) so the
    store must name utf8mb4 itself; the app user has a password and logs in over TCP."""

    name = "mariadb"
    system_user = "mysql"

    def __init__(self) -> None:
        install = shutil.which("mariadb-install-db") or shutil.which("mysql_install_db")
        server = shutil.which("mariadbd") or shutil.which("mariadbd", path="/usr/sbin")
        client = shutil.which("mariadb") or shutil.which("mysql")
        if not (install and server and client):
            raise ServerUnavailable("MariaDB is not installed (no mariadb-install-db / mariadbd / mariadb)")
        self.install, self.server, self.client = install, server, client
        super().__init__()
        self.socket = self.workdir / "mariadb.sock"
        self.admin = _os_user()  # root, or whoever runs the tests

    def initialise(self) -> None:
        _run(
            [
                self.install,
                "--no-defaults",
                f"--datadir={self.workdir / 'data'}",
                f"--user={self.run_as or _os_user()}",
                # The admin logs in through the socket as the OS user running the tests.
                "--auth-root-authentication-method=socket",
                f"--auth-root-socket-user={self.admin}",
                "--skip-test-db",
                "--skip-name-resolve",
            ],
            cwd=self.workdir,
        )

    def server_argv(self) -> list[str]:
        return [
            self.server,
            "--no-defaults",
            f"--datadir={self.workdir / 'data'}",
            f"--socket={self.socket}",
            f"--pid-file={self.workdir / 'mariadb.pid'}",
            f"--port={self.port}",
            "--bind-address=127.0.0.1",
            "--skip-name-resolve",
            # A throwaway server: durability is not wanted, speed and a small footprint are.
            "--innodb-flush-log-at-trx-commit=0",
            "--innodb-doublewrite=0",
            "--innodb-buffer-pool-size=64M",
            "--innodb-log-file-size=16M",
        ]

    def admin_sql(self, sql: str) -> str:
        # unix_socket authentication: the OS user running the tests is the server's admin.
        return _run(
            [self.client, "--no-defaults", f"--socket={self.socket}", "--protocol=socket", f"-u{self.admin}"],
            cwd=self.workdir,
            stdin=sql,
            hide=(self.password,),
        )

    def create_app_user(self) -> None:
        self.admin_sql(
            f"CREATE USER '{APP_USER}'@'127.0.0.1' IDENTIFIED BY '{self.password}';"
            f" GRANT ALL PRIVILEGES ON `test\\_%`.* TO '{APP_USER}'@'127.0.0.1'"
        )

    def url(self, database: str) -> str:
        return URL.create("mysql+asyncmy", APP_USER, self.password, "127.0.0.1", self.port, database).render_as_string(
            hide_password=False
        )

    def create_database(self, database: str) -> str:
        self.admin_sql(f"CREATE DATABASE `{database}`")
        return self.url(database)

    def drop_database(self, database: str) -> None:
        self.admin_sql(f"DROP DATABASE IF EXISTS `{database}`")


def _started(kind: type[DatabaseServer]) -> Iterator[DatabaseServer]:
    try:
        server = kind()
    except ServerUnavailable as exc:
        _missing(str(exc))
    try:
        server.start()
    except BaseException:
        server.stop()
        raise
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[DatabaseServer]:
    """A PostgreSQL server for the whole test session."""
    yield from _started(PostgresServer)


@pytest.fixture(scope="session")
def mariadb_server() -> Iterator[DatabaseServer]:
    """A MariaDB server for the whole test session."""
    yield from _started(MariadbServer)


def _fresh_database(server: DatabaseServer) -> Iterator[str]:
    name = f"test_{os.getpid()}_{next(_names)}"
    url = server.create_database(name)
    yield url
    server.drop_database(name)


@pytest.fixture
def postgres_url(postgres_server: DatabaseServer) -> Iterator[str]:
    """`postgresql+asyncpg://…` of an empty database of this test's own."""
    yield from _fresh_database(postgres_server)


@pytest.fixture
def mariadb_url(mariadb_server: DatabaseServer) -> Iterator[str]:
    """`mysql+asyncmy://…` of an empty database of this test's own."""
    yield from _fresh_database(mariadb_server)
