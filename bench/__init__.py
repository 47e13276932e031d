"""callbot's benchmarks: the load harness (``python -m bench``) and single-purpose measurements."""
