"""The trainer runs each stage for a few steps, resumes, and exports loadable diffusers folders."""

import json
import shutil

from diffusers import ControlNetModel, StableDiffusionPipeline

from attention_processors.cross_view import CrossViewProjections

from training.train import main as train


def test_train_all_stages_resume_and_export(tmp_path):
    out, weights = tmp_path / "runs", tmp_path / "weights"
    common = ["--batch", "4", "--save-every", "2", "--sample-every", "0", "--out", str(out), "--threads", "2"]
    train(["--stage", "vae", "--steps", "2", *common])
    train(["--stage", "t2i", "--steps", "2", *common, "--sample-every", "2"])
    train(["--stage", "t2i", "--steps", "3", *common])  # resumes at step 2
    train(["--stage", "controlnet", "--steps", "2", *common])
    train(["--stage", "export", "--out", str(out), "--weights", str(weights)])
    steps = json.loads((weights / "training_steps.json").read_text())
    assert steps == {"vae": 2, "t2i": 3, "controlnet": 2}
    assert (out / "t2i" / "samples" / "step_000002.png").exists()
    pipe = StableDiffusionPipeline.from_pretrained(weights / "world-sd")
    assert pipe.vae.config.scaling_factor != 1.0  # measured on the trained VAE's latents
    ControlNetModel.from_pretrained(weights / "world-controlnet")

    # the driving pipeline's cross-view projections, on the exported model; then an export from a folder
    # that holds only that stage writes world-crossview and leaves world-sd as it was
    cross = [*common, "--batch", "1", "--val-clips", "1", "--weights", str(weights)]
    train(["--stage", "crossview", "--steps", "2", *cross])
    train(["--stage", "crossview", "--steps", "3", *cross])  # resumes at step 2
    assert [json.loads(line)["step"] for line in (out / "crossview" / "log.jsonl").read_text().splitlines()
            if "val_trained" in line] == [2, 3]
    only = tmp_path / "only-crossview"
    shutil.copytree(out / "crossview", only / "crossview")
    unet_file = weights / "world-sd" / "unet" / "diffusion_pytorch_model.safetensors"
    before = unet_file.read_bytes()
    train(["--stage", "export", "--out", str(only), "--weights", str(weights)])
    assert unet_file.read_bytes() == before  # guards against an export that rewrites world-sd with random weights
    steps = json.loads((weights / "training_steps.json").read_text())
    assert steps == {"vae": 2, "t2i": 3, "controlnet": 2, "crossview": 3}
    projections = CrossViewProjections.from_pretrained(weights / "world-crossview")
    assert projections.fits(pipe.unet)
    assert any(p.abs().max() > 0 for p in projections.parameters())  # trained away from zero


def test_vae_decoder_only_keeps_encoder_and_latent_scale(tmp_path):
    import torch

    out = tmp_path / "runs"
    common = ["--batch", "2", "--save-every", "2", "--sample-every", "0", "--out", str(out), "--threads", "2"]
    train(["--stage", "vae", "--steps", "2", *common])
    before = torch.load(out / "vae" / "last.pt", weights_only=False)
    train(["--stage", "vae", "--steps", "4", "--decoder-only", *common])  # fresh optimizer over the decoder
    after = torch.load(out / "vae" / "last.pt", weights_only=False)
    assert after["step"] == 4 and after["scaling_factor"] == before["scaling_factor"]
    old, new = before["models"]["vae"], after["models"]["vae"]
    for k in old:
        same = torch.equal(old[k], new[k])
        if k.startswith(("encoder.", "quant_conv.")):
            assert same, k
    assert any(not torch.equal(old[k], new[k]) for k in old if k.startswith("decoder."))
