"""inference-sidecar: makes a local GPU model server operable."""

__version__ = "0.1.0"
