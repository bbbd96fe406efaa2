"""Config: the one schema of a run (its checks) and config.json save, load and diff.

Imports `core` only (and ml_collections).
"""
