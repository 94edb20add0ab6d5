"""Alembic environment: migrations run on the connection the store hands over (no alembic.ini, no URL)."""

from __future__ import annotations

from alembic import context

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("storage/migrations runs through storage.schema.create_or_upgrade, which passes a connection")
context.configure(connection=connection)
# Inside the store's transaction Alembic adds none of its own: PostgreSQL then applies a whole
# upgrade, version row included, or nothing.
with context.begin_transaction():
    context.run_migrations()
