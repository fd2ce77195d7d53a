"""Linear maps y = x W^T + b: ``naive.py`` (reference, F.linear) and ``skinny.py`` (Triton, few rows)."""
