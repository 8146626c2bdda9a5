"""Alembic environment for the feedback store.

Migrations only ever run through :class:`promptrec.serving.store.FeedbackStore`, which passes
its own open connection in ``config.attributes["connection"]``: the schema upgrade then shares
the store's engine settings (SQLite pragmas, locking) and its transaction.
"""

from alembic import context

connection = context.config.attributes.get("connection")
if connection is None or context.is_offline_mode():
    raise RuntimeError("promptrec feedback-store migrations run through FeedbackStore, with a live connection")

# SQLite cannot ALTER most things in place; batch mode makes future migrations portable.
context.configure(connection=connection, target_metadata=None, render_as_batch=connection.dialect.name == "sqlite")
with context.begin_transaction():
    context.run_migrations()
