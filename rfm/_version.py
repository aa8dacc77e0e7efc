"""The package version, in a module of its own so that library modules can record it without importing `rfm`'s
lazy top-level names (which reach up into rfm.model)."""

__version__ = "0.1.0"
