"""DAM-Net: domain adaptation with micro-labelled fine-tuning for building change detection.

The library layer: data (readers, tiling, synthetic domains), storage, and later models,
training, selection and metrics. It never imports an orchestrator.
"""

__version__ = "0.1.0"
