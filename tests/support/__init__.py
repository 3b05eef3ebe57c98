"""Helpers shared by several test modules (reference computations, stand-ins for engine objects,
hand-written fixture files, subprocess jobs). Test modules import from here, never from each other;
pytest fixtures live in ``tests/conftest.py``. The rule is kept by an import-linter contract
(pyproject.toml)."""
