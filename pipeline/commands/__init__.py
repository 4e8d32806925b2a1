"""The `python -m pipeline.X` commands; the shims pipeline/X.py keep those paths working."""
