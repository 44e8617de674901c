"""Real checkpoint architectures at real sizes, with random weights from their published configs (no
download): what a layered edit costs beside plain diffusers generation, and PixArt-α's MQD memory.

    python -m benchmarks.real_checkpoints --size 256 --steps 10 --repeats 3 --json out.json

Table 1, SD-1.5 (859 M-parameter UNet, CLIP ViT-L text encoder, the SD VAE) at --size: seconds and
peak extra resident memory of one plain text-to-image generation (diffusers' StableDiffusionPipeline)
and of one layered edit (Strata's LayeredEditPipeline through a session: a second layer over a first,
so MQD has three regions, BCG and the overlay run), the same steps, guidance and scheduler (DDIM),
calls alternating; the ratio of medians (goal ≤ 1.10). The text encoder uses the world tokenizer (the
real one cannot be downloaded here); its vocabulary size does not change the cost.

Table 2, PixArt-α's cross-attention at 1024² (4096 tokens, 16 heads × 72, batch 2 for guidance):
one call of the plain processor on one 120-token prompt, of Strata's MQD processor on 3 regions
× 120 padded T5 tokens (per-segment key mask, the torch path), and of the dense masked bias MQD built
before (B, heads, N, R·T), which this replaces: milliseconds and peak extra memory per call.

Peak extra memory: the most resident memory seen above the level before the call (sampled every
5 ms on Linux from /proc/self/statm), MiB.
"""

from __future__ import annotations

import argparse
import os
import statistics
import threading
import time

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
from diffusers.models.attention_processor import Attention, AttnProcessor2_0
from transformers import CLIPTextConfig, CLIPTextModel

from attention_processors import AttentionController, MultiQueryDisentangledProcessor, RegionState
from benchmarks.common import machine, print_table, write_json
from pipelines.layered_edit import EditSettings, LayeredEditPipeline, LayeredSession
from world.tokenizer import build_world_tokenizer

PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * PAGE


class PeakMemory:
    """The most resident memory above the start, sampled in a thread while the block runs."""

    def __enter__(self):
        self.base = self.peak = rss_bytes()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()
        return self

    def _watch(self):
        while not self._stop.wait(0.005):
            self.peak = max(self.peak, rss_bytes())

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_bytes())
        self.extra_mib = (self.peak - self.base) / 2**20


def sd15_components(seed: int = 0) -> dict:
    """SD-1.5's architecture (runwayml/stable-diffusion-v1-5's configs), random weights."""
    tokenizer = build_world_tokenizer()
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(sample_size=64, in_channels=4, out_channels=4, layers_per_block=2,
                                block_out_channels=(320, 640, 1280, 1280), attention_head_dim=8,
                                cross_attention_dim=768, norm_num_groups=32,
                                down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
                                up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3)
    vae = AutoencoderKL(block_out_channels=(128, 256, 512, 512), layers_per_block=2, latent_channels=4,
                        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                        sample_size=512, scaling_factor=0.18215)
    text_encoder = CLIPTextModel(CLIPTextConfig(vocab_size=49408, hidden_size=768, intermediate_size=3072,
                                                num_hidden_layers=12, num_attention_heads=12, max_position_embeddings=77,
                                                hidden_act="quick_gelu", bos_token_id=tokenizer.bos_token_id,
                                                eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.eos_token_id))
    scheduler = DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, clip_sample=False,
                              set_alpha_to_one=False, steps_offset=1)
    return dict(unet=unet.eval(), vae=vae.eval(), text_encoder=text_encoder.eval(), tokenizer=tokenizer,
                scheduler=scheduler, safety_checker=None, feature_extractor=None, requires_safety_checker=False)


def bench_sd15(args) -> dict:
    parts = sd15_components()
    plain = StableDiffusionPipeline(**parts)
    strata = LayeredEditPipeline(**parts)
    for p in (plain, strata):
        p.set_progress_bar_config(disable=True)
    size, steps = args.size, args.steps
    settings = EditSettings(height=size, width=size, steps=steps, guidance=4.0)
    session = LayeredSession(strata, settings)
    session.start_from_prompt("an empty scene of grass", seed=0)
    first = np.zeros((size, size), bool)
    first[size // 8:size // 2, size // 8:size // 2] = True
    session.add_layer("a red circle", first, seed=1)
    second = np.zeros((size, size), bool)
    second[size // 3:7 * size // 8, size // 3:7 * size // 8] = True  # overlaps the first: three regions

    def generate():
        plain("an empty scene of grass", height=size, width=size, num_inference_steps=steps, guidance_scale=4.0,
              generator=torch.Generator().manual_seed(0), output_type="np")

    def edit():
        session.fork().add_layer("a blue square", second, seed=2)
    runs = {"plain generation (diffusers)": generate, "layered edit (Strata, 3 regions)": edit}
    times = {name: [] for name in runs}
    memory = {name: [] for name in runs}
    with torch.no_grad():
        for name, fn in runs.items():  # warm-up
            fn()
        for _ in range(args.repeats):
            for name, fn in runs.items():
                with PeakMemory() as peak:
                    start = time.perf_counter()
                    fn()
                    times[name].append(time.perf_counter() - start)
                memory[name].append(peak.extra_mib)
    rows = {name: {"seconds": statistics.median(times[name]), "seconds_all": times[name],
                   "peak_extra_mib": max(memory[name])} for name in runs}
    plain_s, edit_s = (rows[name]["seconds"] for name in runs)
    return {"size": size, "steps": steps, "repeats": args.repeats, "rows": rows, "ratio": edit_s / plain_s}


def bench_pixart_attention(args) -> dict:
    torch.manual_seed(0)
    attn = Attention(query_dim=1152, cross_attention_dim=1152, heads=16, dim_head=72, bias=True).eval()
    tokens, regions, t, batch = 4096, 3, 120, 2
    x = torch.randn(batch, tokens, 1152)
    states = torch.randn(batch, regions * t, 1152)
    valid = torch.zeros(batch, regions * t, dtype=torch.bool)
    for r, length in enumerate((9, 14, 23)):  # short prompts, as a user's are: most of the 120 is padding
        valid[:, r * t:r * t + length] = True
    bias = ((~valid).float() * -10000.0)[:, None]  # what PixArt's transformer passes
    labels = torch.zeros(64, 64, dtype=torch.long)
    labels[8:40, 8:40] = 1
    labels[30:60, 20:56] = 2
    controller = AttentionController(regions=RegionState(labels, regions, segment_length=t))
    mqd = MultiQueryDisentangledProcessor(controller, "attn2")
    plain = AttnProcessor2_0()

    def dense_before():  # what MQD did before: one masked call with a dense (B, heads, N, R·T) bias
        q = attn.to_q(x).view(batch, -1, 16, 72).transpose(1, 2)
        k = attn.to_k(states).view(batch, -1, 16, 72).transpose(1, 2)
        v = attn.to_v(states).view(batch, -1, 16, 72).transpose(1, 2)
        regions_of = controller.regions.token_regions(tokens, x.device)
        allowed = regions_of[:, None] == torch.arange(regions * t)[None] // t
        full = bias[:, None].expand(batch, 16, tokens, regions * t).masked_fill(~allowed, float("-inf"))
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=full)
        return attn.to_out[0](out.transpose(1, 2).reshape(batch, -1, 1152))
    runs = {"plain cross-attention (1 prompt × 120)": lambda: plain(attn, x, states[:, :t], bias[..., :t]),
            "MQD, per-segment key mask (3 × 120)": lambda: mqd(attn, x, states, attention_mask=bias),
            "MQD before: dense masked bias (3 × 120)": dense_before}
    rows = {}
    with torch.no_grad():
        for name, fn in runs.items():
            fn()
            times, peaks = [], []
            for _ in range(args.repeats):
                with PeakMemory() as peak:
                    start = time.perf_counter()
                    fn()
                    times.append(time.perf_counter() - start)
                peaks.append(peak.extra_mib)
            rows[name] = {"ms": 1000 * statistics.median(times), "peak_extra_mib": max(peaks)}
    return {"tokens": tokens, "heads": 16, "head_dim": 72, "regions": regions, "prompt_tokens": t, "rows": rows}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--skip-sd15", action="store_true", help="only the PixArt attention table")
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    torch.set_grad_enabled(False)
    result = {"machine": machine()}
    if not args.skip_sd15:
        sd = result["sd15"] = bench_sd15(args)
        print_table(f"SD-1.5 architecture at {sd['size']}², {sd['steps']} steps, {machine()} (median of {args.repeats})",
                    ["run", "s", "peak extra MiB"],
                    [[name, r["seconds"], r["peak_extra_mib"]] for name, r in sd["rows"].items()])
        print(f"time per layered edit / plain generation: {sd['ratio']:.2f}")
    px = result["pixart_attention"] = bench_pixart_attention(args)
    print_table(f"PixArt-α cross-attention at 1024² ({px['tokens']} tokens, 16 × 72, batch 2), {machine()}",
                ["call", "ms", "peak extra MiB"], [[name, r["ms"], r["peak_extra_mib"]] for name, r in px["rows"].items()])
    write_json(args.json, result)
    return result


if __name__ == "__main__":
    main()
