"""The package version, in its own module so that subpackages can read it without importing the top level."""

__version__ = "0.1.0"
