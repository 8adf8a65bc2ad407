"""The Alembic migrations, shipped in the wheel so that ``cartl db upgrade`` works from a normal
install: ``app.db.migrate`` finds this folder through the package."""
