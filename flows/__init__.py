"""Prefect flows that orchestrate the dvc.yaml pipeline."""
