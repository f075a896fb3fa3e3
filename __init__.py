"""sa: Shallow Alignment."""
__version__ = "0.1.0"
