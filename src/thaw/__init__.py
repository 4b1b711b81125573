"""thaw: fine-tune pretrained image classifiers."""

__version__ = "0.1.0"
