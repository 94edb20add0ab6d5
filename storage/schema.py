"""Schema versions: the Alembic revisions in storage/migrations, applied when the store opens.

On open (`create_or_upgrade`, run through `run_sync`):
- no table of ours: a new database, created from the models and stamped as the newest revision;
- our tables but no version: made before versioning; after a copy of the file (SQLite) the missing
  columns, indexes and tables of revision 0001 (storage/migrations/baseline.py, frozen) are added,
  it is stamped 0001 and then upgraded like any older revision;
- an older revision: upgraded (SQLite: after a copy of the file);
- a revision this version does not know: made by a newer bot; refused with DatabaseTooNew.
An up-to-date or new database costs no Alembic import; only a real upgrade loads it.
One copy per open at most: `<file>.before-<newest revision>.bak`, made before the first change.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import closing, contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from loguru import logger
from sqlalchemy import Column, Connection, MetaData, String, Table, column, delete, insert, inspect, select, table, text
from sqlalchemy.engine import URL
from sqlalchemy.schema import CreateColumn

# Imported for their tables: with these two, every table is on Base.metadata.
import storage.admin
import storage.seen  # noqa: F401
from core.errors import StorageError
from storage.errors import DatabaseTooNew, short
from storage.models import Base

if TYPE_CHECKING:
    from alembic.config import Config
    from alembic.script import ScriptDirectory

__all__ = ["BASELINE", "HEAD", "MIGRATIONS", "create_or_upgrade"]

HEAD = "0002"  # the newest revision in storage/migrations/versions (a test keeps them in step)
BASELINE = "0001"  # what a database from before versioning is brought to, then stamped as
SHIPPED_MIGRATIONS = Path(__file__).with_name("migrations")
MIGRATIONS = SHIPPED_MIGRATIONS  # tests point it at a copy with a revision of their own
VERSION_TABLE = "alembic_version"
# Any constant shared by all bot processes: the first one to start migrates, the others wait.
_LOCK_ID = 0x71B0_5C4E
_LOCK_NAME = "chatgpt_qq_bot_schema"
_LOCK_WAIT_SECONDS = 60


def create_or_upgrade(conn: Connection) -> None:
    """Bring the database to the newest revision without losing a row. Raises DatabaseTooNew, StorageError."""
    location = MIGRATIONS
    with _schema_lock(conn):
        stored = _stored_revision(conn)
        if location == SHIPPED_MIGRATIONS:
            if stored == HEAD:
                return
            if stored is None and _create_without_alembic(conn):
                return
        config, scripts = _alembic(conn, location)
        head = scripts.get_current_head() or ""
        copied = False
        if stored is None:
            stored, copied = _start_versioning(conn, config, head)
        if stored == head:
            return
        if not _is_known(scripts, stored):
            raise DatabaseTooNew(_shown(conn.engine.url), stored, head)
        from alembic import command

        if not copied:
            _copy_sqlite_file(conn, head, f"upgrading the schema from {stored} to {head}")
        command.upgrade(config, head)
        logger.info("history store: upgraded the schema from revision {} to {}", stored, head)


def _create_without_alembic(conn: Connection) -> bool:
    """A new database: the models' tables, stamped HEAD, without importing Alembic (a test keeps the
    models equal to what the revisions build). False when tables of ours are there already."""
    if _has_tables_of_ours(conn):
        return False
    Base.metadata.create_all(conn)
    _stamp(conn, HEAD)
    logger.info("history store: created the tables (schema revision {})", HEAD)
    return True


def _has_tables_of_ours(conn: Connection) -> bool:
    return bool(set(inspect(conn).get_table_names()) & set(Base.metadata.tables))


def _stamp(conn: Connection, revision: str) -> None:
    """Record `revision` in Alembic's own version table (created as Alembic creates it)."""
    versions = Table(VERSION_TABLE, MetaData(), Column("version_num", String(32), primary_key=True))
    versions.create(conn, checkfirst=True)
    conn.execute(delete(versions))
    conn.execute(insert(versions).values(version_num=revision))


def _start_versioning(conn: Connection, config: Config, head: str) -> tuple[str, bool]:
    """A database without a version: create it at `head`, or copy an old one, fix it up to BASELINE
    and stamp it so. The revision it is at now, and whether the SQLite file was copied."""
    from alembic import command

    if not _has_tables_of_ours(conn):
        command.upgrade(config, head)
        logger.info("history store: created the tables (schema revision {})", head)
        return head, False
    # Named after `head`: this one copy, made before anything changes, also serves the upgrade.
    _copy_sqlite_file(conn, head, "versioning its schema")
    _add_what_is_missing(conn)
    command.stamp(config, BASELINE)
    logger.info("history store: a database from before schema versions is now revision {}", BASELINE)
    return BASELINE, True


def _add_what_is_missing(conn: Connection) -> None:
    """The pre-versioning step: create the missing tables, columns and indexes of revision BASELINE.

    The frozen copy of revision 0001's tables is used, not the models: the database is stamped 0001
    next and upgraded from there by the later revisions, which add their own columns themselves.
    Columns a database has beyond 0001 are left alone. All additive; a column added here must have
    a `server_default` (or be nullable) so the rows already stored stay valid.
    """
    from storage.migrations.baseline import BASELINE_TABLES

    existing = set(inspect(conn).get_table_names())
    BASELINE_TABLES.create_all(conn)
    inspector = inspect(conn)
    for table_ in BASELINE_TABLES.sorted_tables:
        if table_.name not in existing:
            continue
        present = {column_["name"] for column_ in inspector.get_columns(table_.name)}
        for column_ in table_.columns:
            if column_.name not in present:
                _add_column(conn, table_.name, column_)
        indexes = {index["name"] for index in inspector.get_indexes(table_.name)}
        for index in table_.indexes:
            if index.name not in indexes:
                index.create(conn)
                logger.info("history store: added index {} (from a newer version)", index.name)


def _add_column(conn: Connection, table_name: str, column_: Column[object]) -> None:
    if column_.server_default is None and not column_.nullable:
        raise RuntimeError(f"column {table_name}.{column_.name} needs a server default to be added to existing rows")
    definition = CreateColumn(column_).compile(dialect=conn.dialect)
    preparer = conn.dialect.identifier_preparer
    conn.exec_driver_sql(f"ALTER TABLE {preparer.quote(table_name)} ADD COLUMN {definition}")
    logger.info("history store: added column {}.{} (from a newer version)", table_name, column_.name)


def _stored_revision(conn: Connection) -> str | None:
    """The revision in alembic_version; None when the database has no (or an empty) version table."""
    if not inspect(conn).has_table(VERSION_TABLE):
        return None
    rows: list[str] = list(conn.execute(select(column("version_num")).select_from(table(VERSION_TABLE))).scalars())
    if len(rows) > 1:  # branches: never made by this bot
        raise DatabaseTooNew(_shown(conn.engine.url), "+".join(sorted(rows)), HEAD)
    return str(rows[0]) if rows else None


def _alembic(conn: Connection, location: Path) -> tuple[Config, ScriptDirectory]:
    """Alembic's configuration built in code: the scripts in `location`, run on `conn`."""
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    config = Config()
    config.set_main_option("script_location", str(location))
    config.attributes["connection"] = conn
    return config, ScriptDirectory.from_config(config)


def _is_known(scripts: ScriptDirectory, revision: str) -> bool:
    from alembic.util import CommandError

    try:
        return scripts.get_revision(revision) is not None
    except CommandError:  # ResolutionError is one
        return False


def _shown(url: URL) -> str:
    return url.render_as_string(hide_password=True)


@contextmanager
def _schema_lock(conn: Connection) -> Iterator[None]:
    """Several bot processes starting on one server database: one migrates while the others wait.

    PostgreSQL's lock ends with the store's transaction (which also holds the whole upgrade);
    MySQL's is released here. Two processes opening one SQLite file at the same moment are left to
    SQLite's own locking.
    """
    dialect = conn.dialect.name
    if dialect == "postgresql":
        conn.execute(text("SELECT pg_advisory_xact_lock(:id)"), {"id": _LOCK_ID})
        yield
    elif dialect in ("mysql", "mariadb"):
        got = conn.execute(text("SELECT GET_LOCK(:name, :wait)"), {"name": _LOCK_NAME, "wait": _LOCK_WAIT_SECONDS})
        if got.scalar() != 1:
            raise StorageError(f"history store: another bot process held the schema lock for {_LOCK_WAIT_SECONDS} s")
        try:
            yield
        finally:
            conn.execute(text("SELECT RELEASE_LOCK(:name)"), {"name": _LOCK_NAME})
    else:
        yield


def _copy_sqlite_file(conn: Connection, revision: str, why: str) -> None:
    """Copy a SQLite database file to `<file>.before-<revision>.bak` with the online backup API.

    Other databases are not copied (their owners back them up with their own tools). A copy that
    cannot be made stops the upgrade: nothing is changed without one.
    """
    path = _sqlite_file(conn.engine.url)
    if path is None:
        if conn.dialect.name != "sqlite":
            logger.warning("history store: {} without an automatic copy on {}", why, conn.dialect.name)
        return
    target = _free_name(path.with_name(f"{path.name}.before-{revision}.bak"))
    try:
        with closing(sqlite3.connect(path)) as source, closing(sqlite3.connect(target)) as copy:
            source.backup(copy)
    except (sqlite3.Error, OSError) as exc:
        target.unlink(missing_ok=True)
        raise StorageError(f"history store: cannot copy {path} before {why}: {short(exc)}") from exc
    logger.info("history store: copied {} to {} before {}", path, target, why)


def _sqlite_file(url: URL) -> Path | None:
    """The file of a SQLite URL (plain path or `file:` URI); None for in-memory and other databases."""
    if url.get_backend_name() != "sqlite" or not url.database:
        return None
    name = url.database
    if url.query.get("uri") in ("true", "1") or name.startswith("file:"):
        if url.query.get("mode") == "memory":
            return None
        name = name.removeprefix("file:").split("?", 1)[0]
    if name in ("", ":memory:"):
        return None
    return Path(name)


def _free_name(path: Path) -> Path:
    """`path`, or `path` numbered .2, .3, ... when an earlier copy is there (never overwritten)."""
    candidate, number = path, 1
    while candidate.exists():
        number += 1
        candidate = path.with_name(f"{path.name}.{number}")
    return candidate
