"""Strata's diffusion pipelines, one package per capability, what they share, and the model loader."""

import logging

# xformers (a backend for GPUs) warns on import, on every CPU machine, that its CUDA kernels cannot
# load; diffusers imports it. The attention registry says the same where it matters (`kernels.choice_for`).
logging.getLogger("xformers").setLevel(logging.ERROR)
