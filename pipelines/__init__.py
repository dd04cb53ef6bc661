"""Kubeflow Pipelines definitions of the DAM-Net region workflow (kfp venv only: see README.md)."""
