"""Query injection: rendered queries fed back into generation, in two modes.

- `blend` (cheap): inside the layer, q' = (1 − w)·q + w·q̂ through `kernels.blended_attention` (the
  processor reads `QueryState.blend_target`); w = 1 attends with exactly the rendered queries.
- `guidance` (the paper's soft injection): before the scheduler step, one gradient step on the noisy
  latent that lowers Σ_layers mean‖q(z) − q̂‖² — `guidance_step` runs the denoiser with the queries kept
  on the graph and returns the moved latent. The step is α times the gradient scaled to unit RMS, so α
  is in latent units whatever the model's scale.
"""

from __future__ import annotations

from typing import Callable

import torch

from attention_processors.query_record import QueryState


def query_distance(state: QueryState) -> torch.Tensor:
    """Σ over the layers with rendered queries of the mean squared distance to the recorded ones."""
    terms = [((state.recorded[name].float() - target.float()) ** 2).mean()
             for name, target in state.rendered.items() if name in state.recorded]
    if not terms:
        raise ValueError("rendered: no recorded layer has rendered queries to move towards")
    return torch.stack(terms).sum()


def guidance_step(denoise: Callable[[torch.Tensor], object], latents: torch.Tensor, state: QueryState,
                  alpha: float) -> tuple[torch.Tensor, float]:
    """One gradient step on latents toward state.rendered. denoise(latents) runs the denoiser (with the
    processors installed) on its argument; returns (new latents, the distance before the step)."""
    saved = (state.recording, state.keep_graph, state.mode, dict(state.recorded))
    state.recording, state.keep_graph, state.mode = True, True, None
    try:
        with torch.enable_grad():
            z = latents.detach().requires_grad_(True)
            denoise(z)
            distance = query_distance(state)
            (grad,) = torch.autograd.grad(distance, z)
    finally:
        state.recording, state.keep_graph, state.mode, state.recorded = saved
    rms = grad.pow(2).mean().sqrt().clamp_min(1e-12)
    return (latents - alpha * grad / rms).detach(), float(distance.detach())
