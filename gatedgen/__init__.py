"""gatedgen: text generation for gated-attention (Forgetting Transformer) language models."""

__version__ = "0.1.0"
