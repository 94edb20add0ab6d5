"""Revision 0002: `sessions.voice`, the voice chosen with 切换语音 ("" = the configured one, "off" = none).

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    """Add the column; stored sessions get "" (follow the configuration), so every row stays valid.

    A plain ADD COLUMN with a constant default: SQLite, PostgreSQL and MySQL/MariaDB all add it in
    place, without copying the table. The column is left alone when it is there already: a first
    start stopped between creating the tables (at this revision) and recording the version leaves a
    database that looks unversioned, which is then stamped 0001 and brought here.
    """
    present = {column["name"] for column in sa.inspect(op.get_bind()).get_columns("sessions")}
    if "voice" not in present:
        op.add_column("sessions", sa.Column("voice", sa.String(255), server_default="", nullable=False))


def downgrade() -> None:
    """Not supported: the bot never goes back (restore the .before-0002.bak copy instead)."""
    raise NotImplementedError("revision 0002 has no downgrade")
