"""ctxext: extend the context window of pretrained language models."""

__version__ = "0.1.0"
