"""align_jax: JAX-native LLM alignment research codebase (RefAlign, ALaRM, DPO family, RPO,
listwise objectives, alignment-potential selection, LD-Align)."""

__version__ = "0.1.0"
