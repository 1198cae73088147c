"""preftune: train generative models from preference feedback."""
__version__ = "0.1.0"
