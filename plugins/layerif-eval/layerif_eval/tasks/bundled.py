"""Entry point of the shipped task YAMLs' ``custom_dataset: !function bundled.load_bundled``."""

from layerif_eval.bundled import load_bundled

__all__ = ["load_bundled"]
