"""One folder per pipeline: nodes.py (pure functions) + pipeline.py (wiring)."""
