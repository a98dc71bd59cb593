"""Custom Kedro datasets for formats kedro-datasets does not cover.

Kept import-free: the catalog imports each class by its full path, and the torch-based datasets
should not load torch for pipelines that never touch them.
"""
