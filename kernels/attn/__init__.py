"""Gated softmax attention: ``naive`` (reference), ``parallel`` (Triton prefill/training),
``decoding`` (Triton split-KV decode)."""
