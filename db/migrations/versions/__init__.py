"""Alembic revisions, one per schema version (db/migrations/__init__.py). A package, so that
setuptools ships the files in a wheel; Alembic skips __init__.py."""
