"""`LayeredEditPipeline`: generates one layer of a layered edit.

The denoising loop runs Multi-Query Disentanglement in cross-attention (each region sees only its
own prompt) and Background Consistency Guidance (after every scheduler step, outside the rough mask
the latent is taken from the previous layer's trajectory, except during the last `harmonize`
fraction of steps). It runs on SD-1.x-style UNets (the embedded default), SDXL-style UNets (two text
encoders, added conditioning) and PixArt-style transformers (T5 with a padding mask).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import DDIMScheduler, DiffusionPipeline
from tqdm.auto import tqdm

from attention_processors import AttentionController, MultiQueryDisentangledProcessor, installed_processors
from attention_processors.install import is_cross_attention
from pipelines.layered_edit.settings import EditSettings


class LayeredEditPipeline(DiffusionPipeline):
    """Generates one layer at a time; `LayeredSession` holds the layers."""

    _optional_components = ["unet", "transformer", "text_encoder_2", "tokenizer_2", "safety_checker",
                            "feature_extractor", "image_encoder"]

    def __init__(self, vae, text_encoder, tokenizer, scheduler, unet=None, transformer=None, text_encoder_2=None,
                 tokenizer_2=None, safety_checker=None, feature_extractor=None, image_encoder=None,
                 requires_safety_checker: bool = False):
        super().__init__()
        if unet is None and transformer is None:
            raise ValueError("unet/transformer: the pipeline needs a denoiser, got neither")
        scheduler = DDIMScheduler.from_config(scheduler.config)  # deterministic, invertible
        self.register_modules(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, scheduler=scheduler,
                              unet=unet, transformer=transformer, text_encoder_2=text_encoder_2,
                              tokenizer_2=tokenizer_2, safety_checker=None, feature_extractor=None, image_encoder=None)
        self.vae_scale_factor = 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def denoiser(self):
        return self.unet if self.unet is not None else self.transformer

    # diffusers' `device`/`dtype` walk the pipeline's signature and components on every read (about
    # 1 ms each on a CPU); they are read several times per layer, so read one denoiser parameter instead.
    @property
    def device(self) -> torch.device:
        return next(self.denoiser.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.denoiser.parameters()).dtype

    # -- prompts

    def _tokens(self, tokenizer, prompts: list[str]):
        return tokenizer(prompts, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                         return_tensors="pt").to(self.device)

    @torch.no_grad()
    def encode_prompts(self, prompts: list[str]) -> dict:
        """Per prompt: hidden (n, T, C), and pooled (SDXL) or mask (PixArt) where the model uses them."""
        if self.transformer is not None:
            tokens = self._tokens(self.tokenizer, prompts)
            hidden = self.text_encoder(tokens.input_ids, attention_mask=tokens.attention_mask)[0]
            return {"hidden": hidden, "mask": tokens.attention_mask}
        if self.text_encoder_2 is not None:
            hiddens, pooled = [], None
            for tokenizer, encoder in ((self.tokenizer, self.text_encoder), (self.tokenizer_2, self.text_encoder_2)):
                out = encoder(self._tokens(tokenizer, prompts).input_ids, output_hidden_states=True)
                hiddens.append(out.hidden_states[-2])
                pooled = out[0]
            return {"hidden": torch.cat(hiddens, -1), "pooled": pooled}
        return {"hidden": self.text_encoder(self._tokens(self.tokenizer, prompts).input_ids)[0]}

    def _condition(self, region_prompts: list[str], negative: str, settings: EditSettings) -> dict:
        """Encoder states for [negative half; conditional half], prompts concatenated along tokens."""
        enc = self.encode_prompts(region_prompts + [negative])
        n = len(region_prompts)
        cond = enc["hidden"][:n].reshape(1, -1, enc["hidden"].shape[-1])
        uncond = enc["hidden"][n:].repeat(1, n, 1)
        out = {"hidden": torch.cat([uncond, cond]), "embeds": enc["hidden"][n - 1:n]}
        if "mask" in enc:
            out["mask"] = torch.cat([enc["mask"][n:].repeat(1, n), enc["mask"][:n].reshape(1, -1)])
        if "pooled" in enc:  # the global vector: the newest prompt's
            out["pooled"] = torch.cat([enc["pooled"][n:], enc["pooled"][n - 1:n]])
            size = [settings.height, settings.width, 0, 0, settings.height, settings.width]
            out["time_ids"] = torch.tensor([size, size], dtype=out["pooled"].dtype, device=self.device)
        return out

    def _predict(self, latents, t, cond: dict) -> torch.Tensor:
        if self.transformer is not None:
            out = self.transformer(latents, encoder_hidden_states=cond["hidden"], encoder_attention_mask=cond["mask"],
                                   timestep=t.expand(len(latents)), added_cond_kwargs={"resolution": None, "aspect_ratio": None}).sample
            return out[:, :latents.shape[1]]  # PixArt also predicts a variance
        extra = {}
        if "pooled" in cond:
            extra["added_cond_kwargs"] = {"text_embeds": cond["pooled"], "time_ids": cond["time_ids"]}
        return self.unet(latents, t, cond["hidden"], **extra).sample

    # -- latents and images

    def latent_size(self, settings: EditSettings) -> tuple[int, int]:
        return settings.height // self.vae_scale_factor, settings.width // self.vae_scale_factor

    def noise(self, seed: int, settings: EditSettings) -> torch.Tensor:
        channels = self.denoiser.config.in_channels
        gen = torch.Generator().manual_seed(int(seed))
        return torch.randn((1, channels, *self.latent_size(settings)), generator=gen).to(self.device, self.dtype)

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> np.ndarray:
        image = self.vae.decode(latents / self.vae.config.scaling_factor).sample
        return ((image[0].clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).cpu().numpy()

    @torch.no_grad()
    def encode_image(self, image: np.ndarray) -> torch.Tensor:
        x = torch.from_numpy(image).permute(2, 0, 1)[None].to(self.device, self.dtype) / 127.5 - 1
        return self.vae.encode(x).latent_dist.mean * self.vae.config.scaling_factor

    def latent_mask(self, rough_mask: np.ndarray, settings: EditSettings) -> torch.Tensor:
        """(1, 1, h, w) in {0, 1}: a latent pixel belongs to the mask if the mask touches it."""
        m = torch.from_numpy(rough_mask.astype(np.float32))[None, None]
        return F.adaptive_max_pool2d(m, self.latent_size(settings)).to(self.device, self.dtype)

    # -- one layer

    @torch.no_grad()
    def generate_layer(self, region_prompts: list[str], labels: torch.Tensor | None, seed: int, settings: EditSettings,
                       background: torch.Tensor | None = None, mask: torch.Tensor | None = None,
                       progress: bool = True, callback=None, start: torch.Tensor | None = None
                       ) -> tuple[torch.Tensor, torch.Tensor]:
        """Denoise one layer. region_prompts[j] is the prompt of region j of labels ((h, w), or None
        for one prompt everywhere); background: the previous trajectory for BCG, with mask (1, 1, h, w).
        start: a trajectory (steps + 1, C, h, w) taken from memory for the BCG phase; only the last
        `harmonize` steps are then run, from its latents at that point.
        Returns the trajectory (steps + 1, C, h, w) and the newest prompt's embeddings."""
        self.scheduler.set_timesteps(settings.steps, device=self.device)
        cond = self._condition(region_prompts, settings.negative_prompt, settings)
        n_blended = int(round(settings.steps * (1 - settings.harmonize)))
        if start is not None:
            first = n_blended
            z = start[first:first + 1]
            trajectory = list(start[:first + 1])
        else:
            first = 0
            z = self.noise(seed, settings)
            if background is not None:
                z = background[0:1] * (1 - mask) + z * mask
            trajectory = [z[0]]
        controller = AttentionController(self.latent_size(settings), labels, n_regions=len(region_prompts),
                                         segment_length=cond["hidden"].shape[1] // len(region_prompts),
                                         shared_rows=1)  # row 0 is the negative prompt, repeated
        use_mqd = labels is not None and len(region_prompts) > 1

        def make(name, original):
            return MultiQueryDisentangledProcessor(controller) if use_mqd and is_cross_attention(name) else None
        with installed_processors(self.denoiser, make):
            for i, t in enumerate(tqdm(self.scheduler.timesteps[first:], desc="layer", leave=False, disable=not progress),
                                  start=first):
                controller.begin_step(i, int(t))
                pred = self._predict(torch.cat([z, z]), t, cond)
                uncond, text = pred.chunk(2)
                z = self.scheduler.step(uncond + settings.guidance * (text - uncond), t, z).prev_sample
                if background is not None and settings.bcg and i < n_blended:
                    z = background[i + 1:i + 2] * (1 - mask) + z * mask
                trajectory.append(z[0])
                if callback is not None:
                    callback(i + 1, settings.steps)
        return torch.stack(trajectory), cond["embeds"]

    @torch.no_grad()
    def invert(self, latents: torch.Tensor, prompt: str, settings: EditSettings, progress: bool = True) -> torch.Tensor:
        """DDIM inversion of clean latents (1, C, h, w) into a trajectory (steps + 1, C, h, w)."""
        self.scheduler.set_timesteps(settings.steps, device=self.device)
        cond = self._condition([prompt], "", settings)
        cond = {k: v[1:] for k, v in cond.items() if k != "embeds"}  # conditional branch only
        alphas = self.scheduler.alphas_cumprod.to(self.device)
        timesteps = self.scheduler.timesteps
        trajectory = [None] * settings.steps + [latents[0]]
        z = latents
        for k in tqdm(range(settings.steps - 1, -1, -1), desc="inversion", leave=False, disable=not progress):
            t = timesteps[k]
            out = self._predict(z, t, cond)
            a_prev = alphas[timesteps[k + 1]] if k + 1 < settings.steps else torch.tensor(1.0, device=self.device)
            a_t = alphas[t]
            if self.scheduler.config.prediction_type == "v_prediction":
                x0 = a_prev.sqrt() * z - (1 - a_prev).sqrt() * out
                eps = a_prev.sqrt() * out + (1 - a_prev).sqrt() * z
            else:
                eps = out
                x0 = (z - (1 - a_prev).sqrt() * eps) / a_prev.sqrt()
            z = a_t.sqrt() * x0 + (1 - a_t).sqrt() * eps
            trajectory[k] = z[0]
        return torch.stack(trajectory)

    def forward_noised(self, latents: torch.Tensor, seed: int, settings: EditSettings) -> torch.Tensor:
        """The cheap alternative to inversion: the clean latents noised with one fixed noise."""
        self.scheduler.set_timesteps(settings.steps, device=self.device)
        noise = self.noise(seed, settings)
        steps = [self.scheduler.add_noise(latents, noise, t[None])[0] for t in self.scheduler.timesteps]
        return torch.stack(steps + [latents[0]])
