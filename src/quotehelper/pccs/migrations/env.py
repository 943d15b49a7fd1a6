"""Alembic environment: runs on the connection the PCCS passes in (`config.attributes["connection"]`)."""

from alembic import context

from quotehelper.pccs.db import metadata

connection = context.config.attributes["connection"]
context.configure(connection=connection, target_metadata=metadata, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
