"""Alembic environment: used by `keywatch db upgrade` and at daemon start, with the daemon's own engine."""

from alembic import context

from keywatch.store.models import Base

config = context.config
connection = config.attributes.get("connection")
if connection is None:
    raise RuntimeError("run migrations through keywatch (keywatch db upgrade), which passes a connection")
context.configure(connection=connection, target_metadata=Base.metadata, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
