"""RMSNorm with an optional fused residual add: ``naive.py`` (reference) and ``rmsnorm.py`` (Triton)."""
