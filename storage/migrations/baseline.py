"""The tables of revision 0001, frozen: what a database from before schema versions is fixed up to.

storage/schema.py adds whatever of this is missing to such a database, stamps it 0001 and lets
Alembic upgrade it from there, so this must stay revision 0001's schema however the models
change (tests/test_migrations.py compares it with what versions/0001_current_schema.py builds on
SQLite, PostgreSQL and MariaDB). Imported only on that path, never by a normal start.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import mysql

__all__ = ["BASELINE_TABLES"]

# Written out like the revision's own: a frozen schema imports nothing from storage/models.py.
Id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
LongText = sa.Text().with_variant(mysql.MEDIUMTEXT(), "mysql", "mariadb")
MYSQL_TABLE: dict[str, Any] = {
    "mysql_charset": "utf8mb4",
    "mysql_collate": "utf8mb4_unicode_ci",
    "mysql_engine": "InnoDB",
}


def key_string(length: int = 255) -> sa.String:
    """Compared exactly: binary collation on MySQL/MariaDB, whose default collations ignore case."""
    return sa.String(length).with_variant(
        mysql.VARCHAR(length, charset="utf8mb4", collation="utf8mb4_bin"), "mysql", "mariadb"
    )


BASELINE_TABLES = sa.MetaData()
"""Revision 0001's tables and indexes."""

sa.Table(
    "messages",
    BASELINE_TABLES,
    sa.Column("id", Id, primary_key=True, autoincrement=True),
    sa.Column("session_key", key_string(), nullable=False),
    sa.Column("role", key_string(16), nullable=False),
    sa.Column("content", LongText, nullable=False),
    sa.Column("tokens", sa.Integer(), nullable=False),
    sa.Column("hidden", sa.Boolean(), server_default=sa.false(), nullable=False),
    sa.Column("created_at", sa.Double(), nullable=False),
    sa.Index("ix_messages_session_key_id", "session_key", "id"),
    sqlite_autoincrement=True,
    **MYSQL_TABLE,
)
sa.Table(
    "sessions",
    BASELINE_TABLES,
    sa.Column("session_key", key_string(), primary_key=True),
    sa.Column("cleared_before", Id, server_default="0", nullable=False),
    sa.Column("preset", sa.String(255), server_default="", nullable=False),
    sa.Column("model", sa.String(255), server_default="", nullable=False),
    sa.Column("account", sa.String(255), server_default="", nullable=False),
    sa.Column("reply_mode", sa.String(16), server_default="", nullable=False),
    sa.Column("updated_at", sa.Double(), server_default="0", nullable=False),
    sa.Index("ix_sessions_updated_at", "updated_at", "session_key"),
    **MYSQL_TABLE,
)
sa.Table(
    "rate_limits",
    BASELINE_TABLES,
    sa.Column("scope", key_string(16), primary_key=True),
    sa.Column("target", key_string(), primary_key=True),
    sa.Column("limit_per_hour", sa.Integer(), nullable=False),
    sa.Column("updated_at", sa.Double(), nullable=False),
    **MYSQL_TABLE,
)
sa.Table(
    "usage",
    BASELINE_TABLES,
    sa.Column("id", Id, primary_key=True, autoincrement=True),
    sa.Column("scope", key_string(16), nullable=False),
    sa.Column("target", key_string(), nullable=False),
    sa.Column("at", sa.Double(), nullable=False),
    sa.Index("ix_usage_scope_target_at", "scope", "target", "at"),
    **MYSQL_TABLE,
)
sa.Table(
    "blacklist",
    BASELINE_TABLES,
    sa.Column("scope", key_string(16), primary_key=True),
    sa.Column("target", key_string(), primary_key=True),
    sa.Column("created_at", sa.Double(), nullable=False),
    **MYSQL_TABLE,
)
sa.Table(
    "seen_events",
    BASELINE_TABLES,
    sa.Column("key", key_string(), primary_key=True),
    sa.Column("seen_at", sa.Double(), nullable=False),
    **MYSQL_TABLE,
)
