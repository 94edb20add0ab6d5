"""Alembic revisions of the database schema; storage/schema.py applies them when the store opens.

A new revision: copy versions/0001_current_schema.py's shape (or run `alembic revision` with a
throwaway alembic.ini whose script_location is this folder), set `down_revision` to the previous
one, write `upgrade()` with `op.*` calls that keep every row (SQLite: `op.batch_alter_table` for
anything beyond ADD COLUMN), and move `storage.schema.HEAD` to it (a test checks that the two agree).
baseline.py is revision 0001's schema, frozen: never change it with the models.
"""
