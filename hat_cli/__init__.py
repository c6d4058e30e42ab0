"""hat: super-resolution with HAT (Hybrid Attention Transformer) from the command line and Python."""

__version__ = "0.1.0"
