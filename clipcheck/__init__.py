"""clipcheck: finds misplaced gradient clipping, zero-grad and step calls in PyTorch training code."""

__version__ = "0.1.0"
