"""Revision 0001: the schema as it was when versioning began (history, admin and seen-event tables).

Revision ID: 0001
Revises: (none)
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | None = None
depends_on: str | None = None

# The types are written out here, not imported from storage/models.py: a revision stays as it was
# when the models change.
# SQLite only makes a rowid alias of a column typed exactly INTEGER; elsewhere ids need 64 bits.
Id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
# MySQL's TEXT holds only 64 KiB; MEDIUMTEXT holds 16 MiB like the others' TEXT.
LongText = sa.Text().with_variant(mysql.MEDIUMTEXT(), "mysql", "mariadb")
# Every table in utf8mb4 on MySQL/MariaDB, whatever the server's default charset.
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


def upgrade() -> None:
    """Create every table and index of the first version."""
    op.create_table(
        "messages",
        sa.Column("id", Id, primary_key=True, autoincrement=True),
        sa.Column("session_key", key_string(), nullable=False),
        sa.Column("role", key_string(16), nullable=False),
        sa.Column("content", LongText, nullable=False),
        sa.Column("tokens", sa.Integer(), nullable=False),
        sa.Column("hidden", sa.Boolean(), server_default=sa.false(), nullable=False),
        sa.Column("created_at", sa.Double(), nullable=False),
        # AUTOINCREMENT: ids are never reused, so `sessions.cleared_before` never swallows new rows.
        sqlite_autoincrement=True,
        **MYSQL_TABLE,
    )
    op.create_index("ix_messages_session_key_id", "messages", ["session_key", "id"])
    op.create_table(
        "sessions",
        sa.Column("session_key", key_string(), primary_key=True),
        sa.Column("cleared_before", Id, server_default="0", nullable=False),
        sa.Column("preset", sa.String(255), server_default="", nullable=False),
        sa.Column("model", sa.String(255), server_default="", nullable=False),
        sa.Column("account", sa.String(255), server_default="", nullable=False),
        sa.Column("reply_mode", sa.String(16), server_default="", nullable=False),
        sa.Column("updated_at", sa.Double(), server_default="0", nullable=False),
        **MYSQL_TABLE,
    )
    op.create_index("ix_sessions_updated_at", "sessions", ["updated_at", "session_key"])
    op.create_table(
        "rate_limits",
        sa.Column("scope", key_string(16), primary_key=True),
        sa.Column("target", key_string(), primary_key=True),
        sa.Column("limit_per_hour", sa.Integer(), nullable=False),
        sa.Column("updated_at", sa.Double(), nullable=False),
        **MYSQL_TABLE,
    )
    op.create_table(
        "usage",
        sa.Column("id", Id, primary_key=True, autoincrement=True),
        sa.Column("scope", key_string(16), nullable=False),
        sa.Column("target", key_string(), nullable=False),
        sa.Column("at", sa.Double(), nullable=False),
        **MYSQL_TABLE,
    )
    op.create_index("ix_usage_scope_target_at", "usage", ["scope", "target", "at"])
    op.create_table(
        "blacklist",
        sa.Column("scope", key_string(16), primary_key=True),
        sa.Column("target", key_string(), primary_key=True),
        sa.Column("created_at", sa.Double(), nullable=False),
        **MYSQL_TABLE,
    )
    op.create_table(
        "seen_events",
        sa.Column("key", key_string(), primary_key=True),
        sa.Column("seen_at", sa.Double(), nullable=False),
        **MYSQL_TABLE,
    )


def downgrade() -> None:
    """Not supported: the bot never goes back to a schema without tables (restore the .bak copy instead)."""
    raise NotImplementedError("revision 0001 has no downgrade")
