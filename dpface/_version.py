"""The dpface version: the one constant that the package metadata (pyproject.toml reads it),
``dpface.__version__``, ``dpface --version``, receipts and reports all carry."""

__version__ = "0.2.0"
