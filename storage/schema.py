"""Creating the tables, and adding the columns and indexes a newer version brought to a database made earlier."""

from __future__ import annotations

from loguru import logger
from sqlalchemy import Connection, inspect
from sqlalchemy.schema import Column, CreateColumn

from storage.models import Base


def create_or_upgrade(conn: Connection) -> None:
    """Create missing tables, then add missing columns and indexes to existing ones (run through `run_sync`).

    Only additive changes happen here: a new column must have a `server_default` (or be nullable)
    so the rows already stored stay valid. Existing columns are never altered or dropped.
    """
    existing = set(inspect(conn).get_table_names())
    Base.metadata.create_all(conn)
    inspector = inspect(conn)
    for table in Base.metadata.sorted_tables:
        if table.name not in existing:
            continue
        present = {column["name"] for column in inspector.get_columns(table.name)}
        for column in table.columns:
            if column.name not in present:
                _add_column(conn, table.name, column)
        indexes = {index["name"] for index in inspector.get_indexes(table.name)}
        for index in table.indexes:
            if index.name not in indexes:
                index.create(conn)
                logger.info("history store: added index {} (from a newer version)", index.name)


def _add_column(conn: Connection, table: str, column: Column[object]) -> None:
    if column.server_default is None and not column.nullable:
        raise RuntimeError(f"column {table}.{column.name} needs a server default to be added to existing rows")
    definition = CreateColumn(column).compile(dialect=conn.dialect)
    preparer = conn.dialect.identifier_preparer
    conn.exec_driver_sql(f"ALTER TABLE {preparer.quote(table)} ADD COLUMN {definition}")
    logger.info("history store: added column {}.{} (from a newer version)", table, column.name)
