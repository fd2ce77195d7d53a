"""Linear maps y = x W^T + b (optionally of RMSNorm(x + residual)): ``naive.py`` (reference, F.linear)
and ``skinny.py`` (Triton, few rows)."""
