"""SQLAlchemy tables of the append-only conversation history."""

from __future__ import annotations

from typing import cast

from sqlalchemy import BigInteger, Boolean, Double, Index, Integer, String, Table, Text, false
from sqlalchemy.dialects import mysql
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

# SQLite only makes a rowid alias of a column typed exactly INTEGER; elsewhere ids need 64 bits.
Id = BigInteger().with_variant(Integer(), "sqlite")
# Unix times: FLOAT is single precision on MySQL/MariaDB (a 2020s time would lose ~100 s);
# DOUBLE is REAL on SQLite and double precision on PostgreSQL.
UnixTime: Double[float] = Double()
# Message text: MySQL's TEXT holds only 64 KiB; MEDIUMTEXT holds 16 MiB like the others' TEXT.
LongText = Text().with_variant(mysql.MEDIUMTEXT(), "mysql", "mariadb")
# Every table in utf8mb4 on MySQL/MariaDB (4-byte emoji), whatever the server's default charset.
MYSQL_TABLE = {"mysql_charset": "utf8mb4", "mysql_collate": "utf8mb4_unicode_ci", "mysql_engine": "InnoDB"}


def key_string(length: int = 255) -> String:
    """A string compared exactly: MySQL/MariaDB's default collations ignore case (and accents), so
    there the column gets the binary utf8mb4 collation; other databases compare exactly already."""
    return String(length).with_variant(
        mysql.VARCHAR(length, charset="utf8mb4", collation="utf8mb4_bin"), "mysql", "mariadb"
    )


class Base(DeclarativeBase):
    """Declarative base of the history tables."""


class MessageRow(Base):
    """One stored message; rows are never updated except `hidden`, never deleted by the bot."""

    __tablename__ = "messages"
    __table_args__ = (
        # Windows read one session newest-first; this index makes that a range scan of that
        # session's tail whatever the table size.
        Index("ix_messages_session_key_id", "session_key", "id"),
        # AUTOINCREMENT: ids are never reused even if rows are pruned by hand, so `cleared_before`
        # can never swallow new messages.
        {"sqlite_autoincrement": True, **MYSQL_TABLE},
    )

    id: Mapped[int] = mapped_column(Id, primary_key=True, autoincrement=True)
    session_key: Mapped[str] = mapped_column(key_string())
    role: Mapped[str] = mapped_column(key_string(16))  # "user" / "assistant" / "system" / RESET_ROLE
    content: Mapped[str] = mapped_column(LongText)
    tokens: Mapped[int] = mapped_column(Integer)  # estimate_tokens at write time, never recomputed
    hidden: Mapped[bool] = mapped_column(Boolean, server_default=false())  # set by rollback
    created_at: Mapped[float] = mapped_column(UnixTime)


class SessionRow(Base):
    """Per-session state: where the current conversation starts and the chosen settings.

    Defaults live in the database (server_default) so that an INSERT naming only some columns
    is complete whichever way it is executed.
    """

    __tablename__ = "sessions"
    # The console lists sessions by last activity.
    __table_args__ = (Index("ix_sessions_updated_at", "updated_at", "session_key"), MYSQL_TABLE)

    session_key: Mapped[str] = mapped_column(key_string(), primary_key=True)
    # Messages with id <= cleared_before belong to earlier conversations: reset without deleting.
    cleared_before: Mapped[int] = mapped_column(Id, server_default="0")
    preset: Mapped[str] = mapped_column(String(255), server_default="")
    model: Mapped[str] = mapped_column(String(255), server_default="")
    account: Mapped[str] = mapped_column(String(255), server_default="")
    # "text" / "image" / "mixed" chosen by the mode commands; "" follows `[response] mode`
    reply_mode: Mapped[str] = mapped_column(String(16), server_default="")
    updated_at: Mapped[float] = mapped_column(UnixTime, server_default="0")
    # 切换语音: "" follows the configured voice, "off" = turned off by the user, else a voice name.
    # Revision 0002; declared last so that a new table has the column order of an upgraded one.
    voice: Mapped[str] = mapped_column(String(255), server_default="")


# Core handles for the store's statements (typed as Table: `__table__` is declared as FromClause).
messages = cast(Table, MessageRow.__table__)
sessions = cast(Table, SessionRow.__table__)
