"""fmaudit: audit genomic foundation models and their text counterparts."""

__version__ = "0.1.0"
