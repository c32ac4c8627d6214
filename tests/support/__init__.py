"""Shared test fixtures and helpers for the job system (re-exported by each tests/<package>/conftest.py)."""
