"""tilefx: a deep-learning compiler for PyTorch models (capture -> IR -> passes -> TVM/Triton)."""

__version__ = "0.1.0"
