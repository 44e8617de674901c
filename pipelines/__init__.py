"""Strata's diffusion pipelines, one file per capability, and the model loader."""
