"""Train the embedded default model on data the world generates on the fly.

Stages (each resumes from its own last checkpoint in --out/<stage>/):
  vae         AutoencoderKL on flat, orbit and street images (L1 + small KL)
  t2i         CLIP text encoder + UNet jointly on flat-scene captions, v-prediction, min-SNR
              weighting, 10% caption dropout for classifier-free guidance
  controlnet  ControlNet on orbit and street layout maps + depth, UNet and text encoder frozen
  crossview   the driving pipeline's cross-view output projections (one zero-initialised linear layer
              per UNet self-attention layer, `CrossViewProjections`) on street clips, every camera of
              --frames frames denoised jointly through cross-camera and temporal attention exactly as
              `DrivingVideoPipeline` runs them; everything else frozen, starting from the exported
              model in --weights (world-sd, world-controlnet). Logs a validation loss beside the
              parameter-free attention's on fixed clips.
  export      fp16 safetensors diffusers folders into weights/ (world-sd, world-controlnet, and
              world-crossview), each from the stages that have a checkpoint in --out

    python -m training.train --stage vae --steps 3000
    python -m training.train --stage vae --steps 4000 --decoder-only   # later: sharpen the decoder only
    python -m training.train --stage t2i --steps 20000 --batch 48
    python -m training.train --stage controlnet --steps 5000
    python -m training.train --stage crossview --steps 1500 --batch 2 --frames 2
    python -m training.train --stage export

`accelerate launch -m training.train …` runs the same on GPUs (bf16 autocast there).
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from accelerate import Accelerator
from diffusers import (AutoencoderKL, ControlNetModel, DDIMScheduler, StableDiffusionControlNetPipeline,
                       StableDiffusionPipeline)
from diffusers.training_utils import EMAModel, compute_snr
from PIL import Image
from tqdm.auto import tqdm

from attention_processors import AttentionController, installed_processors
from attention_processors.cross_view import CrossViewProjections, ViewState
from attention_processors.temporal import frame_index
from formats.projection import control_maps
from pipelines.conditioning import encode_prompt, images_to_tensor, tensor_to_images
from pipelines.driving_video.pipeline import (CONTROLNET_PREFIX, STREET_MAX_DEPTH, DrivingVideoPipeline,
                                              view_processors)
from world.flat import is_held_out, render_flat, sample_flat_spec
from world.models import build_components, build_controlnet, scheduler_config
from world.orbit import control_map, render_orbit, sample_orbit_spec
from world.street import make_rig, render_street_frame, sample_street_clip

STAGES = ("vae", "t2i", "controlnet", "crossview", "export")
SAMPLE_CAPTIONS = ["a red circle on grass", "a blue square on sand", "a yellow triangle on water",
                   "an orange circle and a black square on snow", "a pink triangle on road",
                   "a purple square and a red triangle on grass", "an empty scene of water", "a black circle on sand"]


# ---- data, generated on the fly -------------------------------------------------------------------

def flat_batch(rng: np.random.Generator, batch: int) -> tuple[torch.Tensor, list[str]]:
    """Flat scenes, mostly with 1–2 objects (what the text-to-image benchmark asks), some 0 or 3."""
    images, captions = [], []
    while len(images) < batch:
        n = int(rng.choice([0, 1, 1, 1, 2, 2, 2, 3]))
        spec = sample_flat_spec(int(rng.integers(2**31)), n, max_overlap=0.15 if n > 1 else 0.0)
        if is_held_out(spec):  # kept for the benchmarks
            continue
        scene = render_flat(spec)
        images.append(scene.image)
        captions.append(scene.caption)
    return images_to_tensor(images), captions


def control_batch(rng: np.random.Generator, batch: int) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """Orbit and street views with their control maps (layout RGB + depth) and captions."""
    images, controls, captions = [], [], []
    while len(images) < batch:
        if rng.random() < 0.6:
            spec = sample_orbit_spec(int(rng.integers(2**31)), (1, 3), n_cameras=8)
            for view in render_orbit(spec, list(rng.choice(8, size=2, replace=False))):
                images.append(view.rgb)
                controls.append(control_map(view))
                captions.append(spec.caption)
        else:
            clip = sample_street_clip(int(rng.integers(2**31)), n_frames=1)
            for view in render_street_frame(clip, 0, list(rng.choice(6, size=2, replace=False))):
                images.append(view.rgb)
                controls.append(control_map(view, max_depth=40.0))
                captions.append("a street view")
    control = torch.from_numpy(np.stack(controls[:batch])).permute(0, 3, 1, 2)
    return images_to_tensor(images[:batch]), control, captions[:batch]


def vae_batch(rng: np.random.Generator, batch: int) -> torch.Tensor:
    n_flat = batch * 3 // 4
    images = [render_flat(sample_flat_spec(int(rng.integers(2**31)), (0, 5), max_overlap=0.3)).image for _ in range(n_flat)]
    extra, _, _ = control_batch(rng, batch - n_flat)
    return torch.cat([images_to_tensor(images), extra])


# ---- checkpoints ----------------------------------------------------------------------------------

def save_checkpoint(path: Path, step: int, models: dict, ema: EMAModel | None, optimizer, **extra) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {"step": step, "models": {k: m.state_dict() for k, m in models.items()},
             "ema": ema.state_dict() if ema is not None else None, "optimizer": optimizer.state_dict(), **extra}
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    tmp.replace(path)  # a crash mid-save never leaves a broken checkpoint


def load_checkpoint(path: Path, models: dict, ema: EMAModel | None, optimizer) -> tuple[int, bool]:
    """Load weights (and EMA) into `models`; returns (step, whether the optimizer state fitted).

    The optimizer state does not fit when the trainable set changed (e.g. `--decoder-only` resuming
    a full-VAE checkpoint); the optimizer then starts fresh and the caller warms it up again."""
    state = torch.load(path, map_location="cpu", weights_only=False)
    for k, m in models.items():
        m.load_state_dict(state["models"][k])
    if ema is not None and state.get("ema"):
        ema.load_state_dict(state["ema"])
    try:
        optimizer.load_state_dict(state["optimizer"])
        fitted = True
    except ValueError:
        fitted = False
    return int(state["step"]), fitted


def grid(images: np.ndarray, cols: int = 4) -> Image.Image:
    n, h, w, _ = images.shape
    rows = math.ceil(n / cols)
    canvas = np.zeros((rows * h, cols * w, 3), dtype=np.uint8)
    for i, im in enumerate(images):
        canvas[(i // cols) * h:(i // cols + 1) * h, (i % cols) * w:(i % cols + 1) * w] = im
    return Image.fromarray(canvas).resize((cols * 128, rows * 128), Image.NEAREST)


# ---- the stages -----------------------------------------------------------------------------------

def lr_at(step: int, base: float, warmup: int) -> float:
    return base * min(1.0, (step + 1) / warmup)


def load_components_from(out: Path) -> dict:
    """Components with the trained VAE / text encoder / UNet (EMA weights) of earlier stages."""
    comps = build_components()
    vae_ckpt = out / "vae" / "last.pt"
    if vae_ckpt.exists():
        state = torch.load(vae_ckpt, map_location="cpu", weights_only=False)
        comps["vae"].load_state_dict(state["models"]["vae"])
        comps["vae"].register_to_config(scaling_factor=state.get("scaling_factor", 1.0))
    t2i_ckpt = out / "t2i" / "last.pt"
    if t2i_ckpt.exists():
        state = torch.load(t2i_ckpt, map_location="cpu", weights_only=False)
        comps["text_encoder"].load_state_dict(state["models"]["text_encoder"])
        comps["unet"].load_state_dict(state["models"]["unet"])
        if state.get("ema"):
            ema = EMAModel(list(comps["unet"].parameters()) + list(comps["text_encoder"].parameters()))
            ema.load_state_dict(state["ema"])
            ema.copy_to(list(comps["unet"].parameters()) + list(comps["text_encoder"].parameters()))
    return comps


def latent_scale(vae: AutoencoderKL, rng: np.random.Generator) -> float:
    with torch.no_grad():
        x = vae_batch(rng, 32)
        z = vae.encode(x).latent_dist.mean
    return float(1.0 / z.std())


def train(args) -> None:
    accelerator = Accelerator(mixed_precision="bf16" if torch.cuda.is_available() else "no")
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed + accelerator.process_index)
    out = Path(args.out)
    stage_dir = out / args.stage
    (stage_dir / "samples").mkdir(parents=True, exist_ok=True)
    comps = load_components_from(out)
    tokenizer = comps["tokenizer"]
    scheduler = DDIMScheduler(**scheduler_config())

    if args.stage == "vae":
        models = {"vae": comps["vae"]}
        vae = comps["vae"]
        # decoder-only keeps the encoder, hence the latents the UNet was trained on, unchanged
        trainable = (list(vae.decoder.parameters()) + list(vae.post_quant_conv.parameters())
                     if args.decoder_only else list(vae.parameters()))
    elif args.stage == "t2i":
        models = {"unet": comps["unet"], "text_encoder": comps["text_encoder"]}
        trainable = list(comps["unet"].parameters()) + list(comps["text_encoder"].parameters())
    else:
        controlnet = build_controlnet(comps["unet"])
        models = {"controlnet": controlnet}
        trainable = list(controlnet.parameters())
    optimizer = torch.optim.AdamW(trainable, lr=args.lr, weight_decay=1e-2)
    ema = EMAModel(trainable, decay=args.ema_decay, use_ema_warmup=True) if args.stage != "vae" else None
    step = warm_from = 0
    ckpt = stage_dir / "last.pt"
    if ckpt.exists() and not args.restart:
        step, fitted = load_checkpoint(ckpt, models, ema, optimizer)
        if not fitted:
            warm_from = step
        accelerator.print(f"resumed {args.stage} at step {step} from {ckpt}"
                          + ("" if fitted else " (new trainable set: fresh optimizer, warm-up again)"))
    for m in ("vae", "unet", "text_encoder"):
        comps[m].requires_grad_(m in models)
    if args.stage == "vae" and args.decoder_only:
        comps["vae"].encoder.requires_grad_(False)
        comps["vae"].quant_conv.requires_grad_(False)
    device = accelerator.device
    for m in ("vae", "unet", "text_encoder"):
        comps[m].to(device)
    if args.stage == "controlnet":
        controlnet.to(device)
    optimizer = accelerator.prepare(optimizer)
    if ema is not None:
        ema.to(device)

    def encode_text(captions: list[str]) -> torch.Tensor:  # the pipelines' own prompt encoding
        return encode_prompt(tokenizer, comps["text_encoder"], captions, device)

    log = open(stage_dir / "log.jsonl", "a")
    bar = tqdm(total=args.steps, initial=step, desc=f"train {args.stage}", disable=not accelerator.is_main_process)
    t0 = time.time()
    while step < args.steps:
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step - warm_from, args.lr, args.warmup)
        with accelerator.autocast():
            if args.stage == "vae":
                x = vae_batch(rng, args.batch).to(device)
                posterior = comps["vae"].encode(x).latent_dist  # (a frozen encoder builds no graph)
                recon = comps["vae"].decode(posterior.sample()).sample
                kl = posterior.kl().mean() / x[0].numel()
                loss = F.l1_loss(recon, x) + F.mse_loss(recon, x) + args.kl_weight * kl
            else:
                if args.stage == "t2i":
                    x, captions = flat_batch(rng, args.batch)
                    control = None
                else:
                    x, control, captions = control_batch(rng, args.batch)
                    control = control.to(device)
                captions = ["" if rng.random() < 0.1 else c for c in captions]
                with torch.no_grad():
                    latents = comps["vae"].encode(x.to(device)).latent_dist.sample() * comps["vae"].config.scaling_factor
                noise = torch.randn_like(latents)
                t = torch.randint(0, scheduler.config.num_train_timesteps, (len(x),), device=device)
                noisy = scheduler.add_noise(latents, noise, t)
                target = scheduler.get_velocity(latents, noise, t)
                with torch.set_grad_enabled(args.stage == "t2i"):
                    text = encode_text(captions)
                if args.stage == "t2i":
                    pred = comps["unet"](noisy, t, text).sample
                else:
                    down, mid = controlnet(noisy, t, text, controlnet_cond=control, return_dict=False)
                    pred = comps["unet"](noisy, t, text, down_block_additional_residuals=down,
                                         mid_block_additional_residual=mid).sample
                snr = compute_snr(scheduler, t)
                weight = torch.minimum(snr, torch.full_like(snr, args.snr_gamma)) / (snr + 1)
                loss = (weight * F.mse_loss(pred.float(), target.float(), reduction="none").mean((1, 2, 3))).mean()
        optimizer.zero_grad(set_to_none=True)
        accelerator.backward(loss)
        torch.nn.utils.clip_grad_norm_(trainable, 1.0)
        optimizer.step()
        if ema is not None:
            ema.step(trainable)
        step += 1
        bar.update(1)
        bar.set_postfix(loss=f"{loss.item():.4f}")
        if step % 20 == 0:
            log.write(json.dumps({"step": step, "loss": loss.item(), "seconds": time.time() - t0}) + "\n")
            log.flush()
        if step % args.save_every == 0 or step == args.steps:
            extra = {}
            if args.stage == "vae":  # latents are scaled to unit variance for the diffusion stages
                if not args.decoder_only:  # (a frozen encoder keeps its scale)
                    comps["vae"].register_to_config(scaling_factor=latent_scale(comps["vae"], np.random.default_rng(0)))
                extra["scaling_factor"] = comps["vae"].config.scaling_factor
            save_checkpoint(ckpt, step, models, ema, optimizer, **extra)
        if args.sample_every and (step % args.sample_every == 0 or step == args.steps):
            write_samples(args.stage, comps, models, ema, trainable, stage_dir / "samples" / f"step_{step:06d}.png")
    bar.close()
    log.close()


@torch.no_grad()
def write_samples(stage: str, comps: dict, models: dict, ema: EMAModel | None, trainable, path: Path) -> None:
    """A sample grid with the EMA weights (restored afterwards)."""
    rng = np.random.default_rng(123)
    if ema is not None:
        ema.store(trainable)
        ema.copy_to(trainable)
    try:
        if stage == "vae":
            x = vae_batch(rng, 8)
            recon = comps["vae"](x.to(comps["vae"].device)).sample.cpu()
            both = torch.cat([x, recon])
            images = tensor_to_images(both)
        elif stage == "t2i":
            pipe = StableDiffusionPipeline(**{**comps, "scheduler": DDIMScheduler(**scheduler_config())})
            pipe.set_progress_bar_config(disable=True)
            images = pipe(SAMPLE_CAPTIONS, num_inference_steps=20, guidance_scale=4.0, height=64, width=64,
                          generator=torch.Generator().manual_seed(0), output_type="np").images
            images = (images * 255).round().astype(np.uint8)
        else:
            x, control, captions = control_batch(rng, 4)
            pipe = StableDiffusionControlNetPipeline(**{**comps, "controlnet": models["controlnet"],
                                                       "scheduler": DDIMScheduler(**scheduler_config())})
            pipe.set_progress_bar_config(disable=True)
            out = pipe(captions, image=control, num_inference_steps=20, guidance_scale=4.0, height=64, width=64,
                       generator=torch.Generator().manual_seed(0), output_type="np").images
            target = tensor_to_images(x)
            layout = (control[:, :3].permute(0, 2, 3, 1).numpy() * 255).astype(np.uint8)
            images = np.concatenate([layout, target, (out * 255).round().astype(np.uint8)])
        grid(images).save(path)
    finally:
        if ema is not None:
            ema.restore(trainable)


# ---- the crossview stage ---------------------------------------------------------------------------

def street_clip_batch(rng: np.random.Generator, clips: int, frames: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Every camera of `frames` frames of `clips` street clips, in the order the driving pipeline batches
    them (clip by clip, frame-major): images (clips·frames·V, 3, H, W) and their control maps, made as
    the pipeline makes them (`formats.projection.control_maps`)."""
    images, controls = [], []
    for _ in range(clips):
        clip = sample_street_clip(int(rng.integers(2**31)), n_frames=frames)
        for f in range(frames):
            images += [view.rgb for view in render_street_frame(clip, f)]
            controls.append(control_maps(clip, f, STREET_MAX_DEPTH)[0])
    return images_to_tensor(images), torch.from_numpy(np.concatenate(controls)).permute(0, 3, 1, 2)


def train_crossview(args) -> None:
    accelerator = Accelerator(mixed_precision="bf16" if torch.cuda.is_available() else "no")
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed + accelerator.process_index)
    stage_dir = Path(args.out) / "crossview"
    stage_dir.mkdir(parents=True, exist_ok=True)
    weights = Path(args.weights)
    if not (weights / "world-sd" / "model_index.json").exists() or not (weights / "world-controlnet").is_dir():
        raise SystemExit(f"--weights: expected the exported world-sd/ and world-controlnet/ in {weights} "
                         "(run the earlier stages and --stage export first)")
    device = accelerator.device
    pipe = DrivingVideoPipeline.from_pretrained(
        weights / "world-sd", controlnet=ControlNetModel.from_pretrained(weights / "world-controlnet", dtype=torch.float32),
        dtype=torch.float32).to(device)
    for model in (pipe.vae, pipe.text_encoder, pipe.unet, pipe.controlnet):
        model.requires_grad_(False)
    projections = CrossViewProjections.for_model(pipe.unet).to(device)
    trainable = list(projections.parameters())
    optimizer = torch.optim.AdamW(trainable, lr=args.lr, weight_decay=1e-2)
    ema = EMAModel(trainable, decay=args.ema_decay, use_ema_warmup=True)
    step = 0
    ckpt = stage_dir / "last.pt"
    if ckpt.exists() and not args.restart:
        step, _ = load_checkpoint(ckpt, {"projections": projections}, ema, optimizer)
        accelerator.print(f"resumed crossview at step {step} from {ckpt}")
    optimizer = accelerator.prepare(optimizer)
    ema.to(device)
    n_views = len(make_rig())  # the rig sample_street_clip gives every clip
    groups = args.frames * n_views
    views = ViewState(frame_index(args.frames, n_views), projections.as_dict())
    controller = AttentionController(views=views)
    text = encode_prompt(pipe.tokenizer, pipe.text_encoder, ["a street view", ""], device)
    scheduler = pipe.scheduler
    # fixed validation clips, noise and timesteps (a generator apart from the training clips')
    val_rng = np.random.default_rng(10**9 + args.seed)
    val = [street_clip_batch(val_rng, 1, args.frames) for _ in range(args.val_clips)]
    val_t = torch.linspace(100, scheduler.config.num_train_timesteps - 100, len(val)).long()
    val_noise = torch.Generator().manual_seed(args.seed)

    def loss_on(x, control, t, noise, keep_caption):
        """Min-SNR-weighted v-prediction loss; t, keep_caption: one per clip, shared by its views."""
        with torch.no_grad():
            latents = pipe.vae.encode(x.to(device)).latent_dist.sample() * pipe.vae.config.scaling_factor
        t_rows = t.to(device).repeat_interleave(groups)
        noisy = scheduler.add_noise(latents, noise, t_rows)
        target = scheduler.get_velocity(latents, noise, t_rows)
        hidden = text[torch.where(keep_caption, 0, 1).repeat_interleave(groups).to(device)]
        pred = pipe.denoise(noisy, t_rows, hidden, control.to(device))
        snr = compute_snr(scheduler, t.to(device))
        weight = (torch.minimum(snr, torch.full_like(snr, args.snr_gamma)) / (snr + 1)).repeat_interleave(groups)
        return (weight * F.mse_loss(pred.float(), target.float(), reduction="none").mean((1, 2, 3))).mean()

    @torch.no_grad()
    def validate() -> dict:
        """Validation loss with the EMA projections and with parameter-free cross-view attention."""
        ema.store(trainable)
        ema.copy_to(trainable)
        losses = {"trained": [], "parameter_free": []}
        try:
            for (x, control), t in zip(val, val_t):
                noise = torch.randn((len(x), pipe.unet.config.in_channels, x.shape[-2] // pipe.vae_scale_factor,
                                     x.shape[-1] // pipe.vae_scale_factor), generator=val_noise.manual_seed(int(t)))
                for name, projected in (("trained", projections.as_dict()), ("parameter_free", {})):
                    views.projections = projected
                    losses[name].append(loss_on(x, control, t[None], noise.to(device), torch.ones(1, dtype=torch.bool)).item())
        finally:
            views.projections = projections.as_dict()
            ema.restore(trainable)
        return {f"val_{k}": float(np.mean(v)) for k, v in losses.items()}

    log = open(stage_dir / "log.jsonl", "a")
    bar = tqdm(total=args.steps, initial=step, desc="train crossview", disable=not accelerator.is_main_process)
    t0 = time.time()
    with installed_processors(pipe.unet, view_processors(controller)), \
            installed_processors(pipe.controlnet, view_processors(controller, CONTROLNET_PREFIX)):
        while step < args.steps:
            for group in optimizer.param_groups:
                group["lr"] = lr_at(step, args.lr, args.warmup)
            x, control = street_clip_batch(rng, args.batch, args.frames)
            t = torch.randint(0, scheduler.config.num_train_timesteps, (args.batch,))
            keep = torch.from_numpy(rng.random(args.batch) >= 0.1)  # 10% caption dropout, per clip
            with accelerator.autocast():
                latent_shape = (pipe.unet.config.in_channels, x.shape[-2] // pipe.vae_scale_factor,
                                x.shape[-1] // pipe.vae_scale_factor)
                loss = loss_on(x, control, t, torch.randn(len(x), *latent_shape, device=device), keep)
            optimizer.zero_grad(set_to_none=True)
            accelerator.backward(loss)
            torch.nn.utils.clip_grad_norm_(trainable, 1.0)
            optimizer.step()
            ema.step(trainable)
            step += 1
            bar.update(1)
            bar.set_postfix(loss=f"{loss.item():.4f}")
            record = {"step": step, "loss": loss.item(), "seconds": time.time() - t0}
            if step % args.save_every == 0 or step == args.steps:
                save_checkpoint(ckpt, step, {"projections": projections}, ema, optimizer,
                                config=dict(projections.config))
                if args.val_clips:
                    record.update(validate())
                    bar.write(f"step {step}: validation loss {record['val_trained']:.4f} trained, "
                              f"{record['val_parameter_free']:.4f} parameter-free")
            if step % 20 == 0 or "val_trained" in record:
                log.write(json.dumps(record) + "\n")
                log.flush()
    bar.close()
    log.close()


def export(args) -> None:
    """Write fp16 diffusers folders for the embedded default (EMA weights), each from the stages that
    have a checkpoint in --out (a folder with none is left as it is)."""
    out = Path(args.out)
    comps = load_components_from(out)
    dest = Path(args.weights)
    if (out / "vae" / "last.pt").exists() or (out / "t2i" / "last.pt").exists():
        pipe = StableDiffusionPipeline(**comps)
        pipe.to(torch.float16)
        pipe.save_pretrained(dest / "world-sd", safe_serialization=True)
    cn_ckpt = out / "controlnet" / "last.pt"
    if cn_ckpt.exists():
        controlnet = build_controlnet(comps["unet"])
        state = torch.load(cn_ckpt, map_location="cpu", weights_only=False)
        controlnet.load_state_dict(state["models"]["controlnet"])
        if state.get("ema"):
            ema = EMAModel(list(controlnet.parameters()))
            ema.load_state_dict(state["ema"])
            ema.copy_to(list(controlnet.parameters()))
        controlnet.to(torch.float16).save_pretrained(dest / "world-controlnet", safe_serialization=True)
    cv_ckpt = out / "crossview" / "last.pt"
    if cv_ckpt.exists():
        state = torch.load(cv_ckpt, map_location="cpu", weights_only=False)
        projections = CrossViewProjections(state["config"]["layers"], state["config"]["dims"])
        projections.load_state_dict(state["models"]["projections"])
        ema = EMAModel(list(projections.parameters()))
        ema.load_state_dict(state["ema"])
        ema.copy_to(list(projections.parameters()))
        projections.to(torch.float16).save_pretrained(dest / "world-crossview", safe_serialization=True)
    steps_file = dest / "training_steps.json"
    steps = json.loads(steps_file.read_text()) if steps_file.exists() else {}
    steps.update({s: torch.load(out / s / "last.pt", map_location="cpu", weights_only=False)["step"]
                  for s in ("vae", "t2i", "controlnet", "crossview") if (out / s / "last.pt").exists()})
    steps_file.parent.mkdir(parents=True, exist_ok=True)
    steps_file.write_text(json.dumps(steps, indent=1) + "\n")
    print(f"exported to {dest}: {steps}")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stage", choices=STAGES, required=True)
    parser.add_argument("--steps", type=int, default=1000, help="train until this global step")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--lr", type=float, default=None, help="default: 1e-3 (vae 5e-4)")
    parser.add_argument("--warmup", type=int, default=200)
    parser.add_argument("--ema-decay", type=float, default=0.999)
    parser.add_argument("--snr-gamma", type=float, default=5.0)
    parser.add_argument("--kl-weight", type=float, default=1e-4)
    parser.add_argument("--decoder-only", action="store_true",
                        help="vae stage: fine-tune only the decoder (the latents, and so the UNet, stay valid)")
    parser.add_argument("--save-every", type=int, default=250)
    parser.add_argument("--sample-every", type=int, default=500, help="write a sample grid every N steps (0: never)")
    parser.add_argument("--frames", type=int, default=2,
                        help="crossview: frames per street clip, denoised jointly (a key frame and the next)")
    parser.add_argument("--val-clips", type=int, default=8,
                        help="crossview: fixed validation clips scored at every save (0: none)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=0, help="CPU threads (0: torch's default)")
    parser.add_argument("--restart", action="store_true", help="ignore an existing checkpoint")
    parser.add_argument("--out", default="runs/train")
    parser.add_argument("--weights", default=str(Path(__file__).resolve().parent.parent / "weights"))
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.lr is None:
        args.lr = 5e-4 if args.stage == "vae" else 1e-3
    if args.stage == "export":
        export(args)
    elif args.stage == "crossview":
        train_crossview(args)
    else:
        train(args)


if __name__ == "__main__":
    main()
