"""Rotary position embedding of q and k: ``naive.py`` (reference) and ``rope.py`` (Triton)."""
