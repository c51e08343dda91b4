"""Alembic environment for crossfade's own schema: migrates the connection `crossfade.backends.sql` hands in."""

from alembic import context

from crossfade.backends.sql import VERSION_TABLE

connection = context.config.attributes.get("connection")
if connection is None or context.is_offline_mode():
    raise RuntimeError(
        "crossfade's schema is migrated through crossfade itself: run `crossfade db upgrade --url URL` "
        "or call crossfade.backends.sql.upgrade(url)"
    )

context.configure(connection=connection, version_table=VERSION_TABLE)
# The caller holds the schema lock in an open transaction, so alembic joins it rather than starting its own.
with context.begin_transaction():
    context.run_migrations()
