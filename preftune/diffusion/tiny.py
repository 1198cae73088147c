"""Tiny random diffusers pipelines built offline, saved with save_pretrained (as the tiny Llama is).

- `save_tiny_pipeline(path, "sd")`: a StableDiffusionPipeline (UNet2DConditionModel, AutoencoderKL,
  CLIPTextModel, DDIM scheduler, eps-prediction) at 16x16 pixels / 8x8 latents;
- `save_tiny_pipeline(path, "sd3")`: a StableDiffusion3Pipeline (SD3Transformer2DModel, two
  CLIPTextModelWithProjection encoders, no T5, FlowMatchEulerDiscreteScheduler): a flow model;
- `save_tiny_pipeline(path, "video")`: a TextToVideoSDPipeline (UNet3DConditionModel): videos.
The tokenizers are the byte-level tokenizer of the built-in LM (no download). They exist to run the
real code path (from_pretrained, VAE latents, encode_prompt, a diffusers pipeline sampling from a
tuned model) in seconds on a CPU; they generate noise.
"""
from __future__ import annotations

from pathlib import Path

import torch

KINDS = ("sd", "sd3", "video")


def _tokenizer():
    from preftune.models import build_tiny_tokenizer

    tokenizer = build_tiny_tokenizer()
    tokenizer.model_max_length = 16
    return tokenizer


def _vae(**scaling):
    from diffusers import AutoencoderKL

    return AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8, 16),
                         down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                         norm_num_groups=4, layers_per_block=1, sample_size=16, **scaling)


def _clip(tokenizer, projection: bool):
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    config = CLIPTextConfig(vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                            num_attention_heads=2, max_position_embeddings=tokenizer.model_max_length,
                            projection_dim=16, pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
                            eos_token_id=tokenizer.eos_token_id)
    return (CLIPTextModelWithProjection if projection else CLIPTextModel)(config)


def _unet(video: bool):
    """A two-block conditional UNet (3-D for video) and SD1.5's DDIM scheduler."""
    import diffusers

    d = "3D" if video else "2D"
    unet = getattr(diffusers, f"UNet{d}ConditionModel")(
        sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(8, 16),
        down_block_types=(f"CrossAttnDownBlock{d}", f"DownBlock{d}"), up_block_types=(f"UpBlock{d}", f"CrossAttnUpBlock{d}"),
        cross_attention_dim=16, norm_num_groups=4, attention_head_dim=4 if video else 2)
    scheduler = diffusers.DDIMScheduler(num_train_timesteps=1000, beta_schedule="scaled_linear", beta_start=0.00085,
                                        beta_end=0.012, clip_sample=False, set_alpha_to_one=False, steps_offset=1)
    return unet, scheduler


def build_tiny_pipeline(kind: str = "sd", seed: int = 0):
    import diffusers

    if kind not in KINDS:
        raise ValueError(f"tiny pipeline kind must be one of {KINDS}, got {kind!r}")
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        tokenizer = _tokenizer()
        if kind in ("sd", "video"):
            unet, scheduler = _unet(kind == "video")
            parts = dict(vae=_vae(), text_encoder=_clip(tokenizer, False), tokenizer=tokenizer, unet=unet,
                         scheduler=scheduler)
            if kind == "video":
                return diffusers.TextToVideoSDPipeline(**parts)
            return diffusers.StableDiffusionPipeline(**parts, safety_checker=None, feature_extractor=None,
                                                     requires_safety_checker=False)
        transformer = diffusers.SD3Transformer2DModel(
            sample_size=8, patch_size=2, in_channels=4, out_channels=4, num_layers=1, attention_head_dim=8,
            num_attention_heads=2, joint_attention_dim=32, caption_projection_dim=16, pooled_projection_dim=32,
            pos_embed_max_size=16)
        return diffusers.StableDiffusion3Pipeline(
            transformer=transformer, scheduler=diffusers.FlowMatchEulerDiscreteScheduler(shift=3.0),
            vae=_vae(scaling_factor=1.5, shift_factor=0.05),
            text_encoder=_clip(tokenizer, True), tokenizer=tokenizer, text_encoder_2=_clip(tokenizer, True),
            tokenizer_2=_tokenizer(), text_encoder_3=None, tokenizer_3=None)


def save_tiny_pipeline(path: str | Path, kind: str = "sd", seed: int = 0) -> Path:
    path = Path(path)
    build_tiny_pipeline(kind, seed).save_pretrained(str(path))
    return path
