"""densekd: distil slow, strong teachers into fast dense retrievers."""

__version__ = "0.1.0"
