"""The package version (its own module, so that nothing inside the package imports the package face for it)."""

__version__ = "0.1.0"
