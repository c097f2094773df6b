"""State storage: SQLAlchemy models, the repository, Alembic migrations."""
