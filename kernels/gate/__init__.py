"""The forget gate fused with the KV-cache append: ``naive.py`` (reference) and ``gate.py`` (Triton)."""
