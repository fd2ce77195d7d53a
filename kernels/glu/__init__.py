"""Gated linear units: SwiGLU silu(gate) * up: ``naive.py`` (reference) and ``swiglu.py`` (Triton)."""
