"""Tiny, randomly initialised pipelines of the real diffusers classes, built in-process.

The shapes follow diffusers' own ``get_dummy_components`` (tests/pipelines/stable_diffusion*/):
a two-level ``UNet2DConditionModel(block_out_channels=(32, 64))``, a two-level ``AutoencoderKL``
and 2-layer CLIP text encoders of width 32. Nothing is downloaded: the tokenizer is a CLIP BPE
tokenizer over a 54-token vocabulary (the two special tokens and ``a``..``z`` with and without
the end-of-word marker), so every lower-case prompt tokenises, letter by letter.

Each pipeline runs 2 denoising steps at 32x32 on a CPU in well under a second. Tests save them
with ``save_pretrained(..., safe_serialization=True)`` and load them back through the same
builders that load real checkpoints.
"""

from __future__ import annotations

from typing import Any

TOKENIZER_MAX_LENGTH = 16  # tokens per prompt, padding included (77 in real CLIP)
TEXT_WIDTH = 32  # hidden size of the tiny CLIP text encoders


def tiny_clip_tokenizer() -> Any:
    """A ``CLIPTokenizer`` over ``a``..``z``: BOS id 0, EOS / pad id 1, no merges."""
    from transformers import CLIPTokenizer

    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for letter in "abcdefghijklmnopqrstuvwxyz":
        vocab[letter] = len(vocab)
        vocab[letter + "</w>"] = len(vocab)  # the letter at the end of a word
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=TOKENIZER_MAX_LENGTH)


def _text_config(vocab_size: int) -> Any:
    from transformers import CLIPTextConfig

    return CLIPTextConfig(
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=1,
        hidden_size=TEXT_WIDTH,
        intermediate_size=37,
        num_attention_heads=4,
        num_hidden_layers=2,
        max_position_embeddings=TOKENIZER_MAX_LENGTH,
        vocab_size=vocab_size,
        projection_dim=TEXT_WIDTH,
        hidden_act="gelu",
    )


def _tiny_vae() -> Any:
    from diffusers import AutoencoderKL

    # Two levels: 32x32 images <-> 4x16x16 latents.
    return AutoencoderKL(
        block_out_channels=(32, 64),
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        latent_channels=4,
        norm_num_groups=2,
        sample_size=32,
    )


def tiny_sd_pipeline(seed: int = 0) -> Any:
    """A random ``StableDiffusionPipeline`` (DDIM scheduler, no safety checker), seeded."""
    import torch
    from diffusers import DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel

    tokenizer = tiny_clip_tokenizer()
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        block_out_channels=(32, 64),
        layers_per_block=2,
        sample_size=16,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=TEXT_WIDTH,
        norm_num_groups=2,
    )
    return StableDiffusionPipeline(
        vae=_tiny_vae(),
        text_encoder=CLIPTextModel(_text_config(len(tokenizer))),
        tokenizer=tokenizer,
        unet=unet,
        scheduler=DDIMScheduler(
            beta_start=0.00085,
            beta_end=0.012,
            beta_schedule="scaled_linear",
            clip_sample=False,
            set_alpha_to_one=False,
            steps_offset=1,
        ),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def tiny_sdxl_pipeline(seed: int = 0) -> Any:
    """A random ``StableDiffusionXLPipeline`` with both text encoders (Euler scheduler), seeded."""
    import torch
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    tokenizer = tiny_clip_tokenizer()
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        block_out_channels=(32, 64),
        layers_per_block=2,
        sample_size=16,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4),
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=8,
        transformer_layers_per_block=(1, 2),
        # 6 micro-conditioning numbers x 8 + the pooled text embedding of text_encoder_2.
        projection_class_embeddings_input_dim=6 * 8 + TEXT_WIDTH,
        cross_attention_dim=2 * TEXT_WIDTH,  # both encoders' hidden states, concatenated
        norm_num_groups=1,
    )
    config = _text_config(len(tokenizer))
    return StableDiffusionXLPipeline(
        vae=_tiny_vae(),
        text_encoder=CLIPTextModel(config),
        text_encoder_2=CLIPTextModelWithProjection(config),
        tokenizer=tokenizer,
        tokenizer_2=tiny_clip_tokenizer(),
        unet=unet,
        scheduler=EulerDiscreteScheduler(
            beta_start=0.00085,
            beta_end=0.012,
            beta_schedule="scaled_linear",
            steps_offset=1,
            timestep_spacing="leading",
        ),
    )
