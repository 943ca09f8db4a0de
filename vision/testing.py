"""Tiny, randomly initialised VLMs of the real transformers classes, for tests and demos.

Each factory builds a real model class (``LlavaForConditionalGeneration``,
``LlavaOnevisionForConditionalGeneration``, ``Qwen2VLForConditionalGeneration``,
``Qwen2_5_VLForConditionalGeneration``) at a tiny size (TRL's tiny-VLM settings: 2 text layers,
vision depth 2), with a processor, image processor and tokenizer built locally (nothing is
downloaded), and saves all of it with ``save_pretrained`` so that a test loads it back through
:meth:`selfcorrect.vision.vlm.VLM.from_pretrained`, the code path real checkpoints take. A model
builds and saves in well under a second on a CPU.

The tokenizer is byte-level BPE over the 256 byte symbols plus a handful of merges, so any text
round-trips, ``"Yes"`` and ``"No"`` are single tokens and longer words are several: both the
one-token and the many-token scoring paths get exercised. Weights are drawn with a large standard
deviation (:data:`INIT_STD`) so that log-probabilities depend visibly on the image, the prompt and
the token positions; with the usual 0.02 every token would be almost equally likely and a test
comparing two computations could not tell a wrong position from a right one.

Example::

    from selfcorrect.vision.testing import build_tiny_vlm
    from selfcorrect.vision.vlm import VLM

    path = build_tiny_vlm("qwen2_vl", tmp_path / "qwen")
    vlm = VLM.from_pretrained(path)
"""

from __future__ import annotations

from pathlib import Path

IMAGE_SIZE = 28  # pixels; two 14-pixel patches a side
PATCH_SIZE = 14
INIT_STD = 0.5
SEED = 0

# Text towers: TRL's tiny-model settings, with hidden 32 so that attention heads are 16 wide.
TEXT_CONFIG = {
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "num_key_value_heads": 1,
    "max_position_embeddings": 512,
}
VISION_CONFIG = {
    "hidden_size": 16,
    "intermediate_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "image_size": IMAGE_SIZE,
    "patch_size": PATCH_SIZE,
}
MERGES = [("Y", "e"), ("Ye", "s"), ("N", "o")]

QWEN_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}IMAGE{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
LLAVA_TEMPLATE = (
    "{% for message in messages %}{{ message['role'].upper() }}: "
    "{% if message['content'] is string %}{{ message['content'] }} {% else %}"
    "{% for part in message['content'] %}{% if part['type'] == 'image' %}<image>\n{% endif %}{% endfor %}"
    "{% for part in message['content'] %}{% if part['type'] == 'text' %}{{ part['text'] }} {% endif %}{% endfor %}"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}ASSISTANT:{% endif %}"
)


def build_tokenizer(special_tokens: list[str], *, bos_token: str | None = None, **named_tokens: str):
    """A byte-level BPE ``PreTrainedTokenizerFast`` with the given special tokens.

    Args:
        special_tokens: added tokens, each one id (image placeholders, chat markers, ...).
        bos_token: when given, prepended to every encoding made with ``add_special_tokens=True``
            (as Llama's tokenizer does), so processors that rely on it are exercised.
        **named_tokens: ``eos_token=``, ``pad_token=`` ... as for ``PreTrainedTokenizerFast``.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {token: i for i, token in enumerate(special_tokens)}
    for token in alphabet + ["".join(pair) for pair in MERGES]:
        vocab.setdefault(token, len(vocab))
    backend = Tokenizer(models.BPE(vocab=vocab, merges=MERGES))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    backend.add_special_tokens(special_tokens)
    if bos_token is not None:
        backend.post_processor = processors.TemplateProcessing(
            single=f"{bos_token} $A", special_tokens=[(bos_token, vocab[bos_token])]
        )
    return PreTrainedTokenizerFast(tokenizer_object=backend, bos_token=bos_token, **named_tokens)


def _randomise(model, seed: int = SEED):
    """Redraw every matrix with std :data:`INIT_STD` (norms and biases keep their init)."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.ndim >= 2:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * INIT_STD)
    return model.eval()


def _save(model, processor, path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return path


def tiny_llava(path: str | Path) -> Path:
    """LLaVA-1.5 shape: CLIP vision tower, Llama text tower, ``USER: <image>\\n... ASSISTANT:`` chat."""
    from transformers import (
        CLIPImageProcessor,
        CLIPVisionConfig,
        LlamaConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
    )

    specials = ["<unk>", "<s>", "</s>", "<pad>", "<image>"]
    tokenizer = build_tokenizer(
        specials, bos_token="<s>", eos_token="</s>", pad_token="<pad>", unk_token="<unk>"
    )
    config = LlavaConfig(
        vision_config=CLIPVisionConfig(**VISION_CONFIG),
        text_config=LlamaConfig(**TEXT_CONFIG, vocab_size=len(tokenizer)),
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
        vision_feature_layer=-2,
        vision_feature_select_strategy="default",
        pad_token_id=tokenizer.pad_token_id,
    )
    model = _randomise(LlavaForConditionalGeneration(config))
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    image_processor = CLIPImageProcessor(
        size={"shortest_edge": IMAGE_SIZE}, crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}
    )
    processor = LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=PATCH_SIZE,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,  # CLIP's CLS token, dropped by the "default" strategy
        chat_template=LLAVA_TEMPLATE,
    )
    return _save(model, processor, Path(path))


def tiny_llava_onevision(path: str | Path) -> Path:
    """LLaVA-OneVision shape (LLaVA-Critic's architecture): SigLIP, Qwen2, anyres tiling."""
    from transformers import (
        LlavaOnevisionConfig,
        LlavaOnevisionForConditionalGeneration,
        LlavaOnevisionImageProcessor,
        LlavaOnevisionProcessor,
        LlavaOnevisionVideoProcessor,
        Qwen2Config,
        SiglipVisionConfig,
    )

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<image>", "<video>"]
    tokenizer = build_tokenizer(specials, eos_token="<|im_end|>", pad_token="<|endoftext|>")
    pinpoints = [[IMAGE_SIZE, IMAGE_SIZE], [IMAGE_SIZE, 2 * IMAGE_SIZE], [2 * IMAGE_SIZE, IMAGE_SIZE]]
    config = LlavaOnevisionConfig(
        vision_config=SiglipVisionConfig(**VISION_CONFIG),
        text_config=Qwen2Config(**TEXT_CONFIG, vocab_size=len(tokenizer)),
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
        video_token_id=tokenizer.convert_tokens_to_ids("<video>"),
        vision_feature_layer=-1,
        vision_feature_select_strategy="full",
        image_grid_pinpoints=pinpoints,
    )
    model = _randomise(LlavaOnevisionForConditionalGeneration(config))
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    image_processor = LlavaOnevisionImageProcessor(
        size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}, image_grid_pinpoints=pinpoints
    )
    processor = LlavaOnevisionProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        video_processor=LlavaOnevisionVideoProcessor(size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}),
        num_image_tokens=(IMAGE_SIZE // PATCH_SIZE) ** 2,
        vision_feature_select_strategy="full",
        chat_template=QWEN_TEMPLATE.replace("IMAGE", "<image>\n"),
    )
    return _save(model, processor, Path(path))


def tiny_qwen2_vl(path: str | Path) -> Path:
    """Qwen2-VL shape: dynamic-resolution ViT with 2x2 patch merging, M-RoPE text tower."""
    from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration, Qwen2VLProcessor

    vision = {
        "embed_dim": VISION_CONFIG["hidden_size"],
        "mlp_ratio": 2,
        "hidden_size": TEXT_CONFIG["hidden_size"],  # the merger's output width
    }
    return _tiny_qwen(path, Qwen2VLConfig, Qwen2VLForConditionalGeneration, Qwen2VLProcessor, vision)


def tiny_qwen2_5_vl(path: str | Path) -> Path:
    """Qwen2.5-VL shape: as Qwen2-VL, with windowed attention in the ViT."""
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration, Qwen2_5_VLProcessor

    vision = {
        "hidden_size": VISION_CONFIG["hidden_size"],
        "intermediate_size": VISION_CONFIG["intermediate_size"],
        "out_hidden_size": TEXT_CONFIG["hidden_size"],
        "window_size": 2 * PATCH_SIZE * 2,  # pixels: one window per 2x2 merged tokens
        "fullatt_block_indexes": [1],  # layer 0 windowed, layer 1 global
    }
    return _tiny_qwen(path, Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration, Qwen2_5_VLProcessor, vision)


def _tiny_qwen(path, config_class, model_class, processor_class, vision: dict) -> Path:
    from transformers import Qwen2VLImageProcessor, Qwen2VLVideoProcessor

    specials = [
        "<|endoftext|>",
        "<|im_start|>",
        "<|im_end|>",
        "<|vision_start|>",
        "<|vision_end|>",
        "<|image_pad|>",
        "<|video_pad|>",
    ]
    tokenizer = build_tokenizer(specials, eos_token="<|im_end|>", pad_token="<|endoftext|>")
    config = config_class(
        text_config={
            **TEXT_CONFIG,
            "vocab_size": len(tokenizer),
            "bos_token_id": None,
            "eos_token_id": tokenizer.eos_token_id,
            "pad_token_id": tokenizer.pad_token_id,
            # temporal, height and width shares of the rotary frequencies: they sum to
            # head_dim / 2 = 32 / 2 / 2
            "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [4, 2, 2]},
        },
        vision_config={
            "depth": VISION_CONFIG["num_hidden_layers"],
            "num_heads": VISION_CONFIG["num_attention_heads"],
            "patch_size": PATCH_SIZE,
            "spatial_merge_size": 2,
            "temporal_patch_size": 2,
            **vision,
        },
        image_token_id=tokenizer.convert_tokens_to_ids("<|image_pad|>"),
        video_token_id=tokenizer.convert_tokens_to_ids("<|video_pad|>"),
        vision_start_token_id=tokenizer.convert_tokens_to_ids("<|vision_start|>"),
        vision_end_token_id=tokenizer.convert_tokens_to_ids("<|vision_end|>"),
    )
    model = _randomise(model_class(config))
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    # images are resized to 56..112 px a side: 4 to 16 merged tokens of 2x2 patches of 14 px
    image_processor = Qwen2VLImageProcessor(
        min_pixels=(2 * IMAGE_SIZE) ** 2,
        max_pixels=(4 * IMAGE_SIZE) ** 2,
        patch_size=PATCH_SIZE,
        merge_size=2,
    )
    processor = processor_class(
        image_processor=image_processor,
        tokenizer=tokenizer,
        video_processor=Qwen2VLVideoProcessor(),
        chat_template=QWEN_TEMPLATE.replace("IMAGE", "<|vision_start|><|image_pad|><|vision_end|>"),
    )
    return _save(model, processor, Path(path))


TINY_FACTORIES = {
    "llava": tiny_llava,
    "llava_onevision": tiny_llava_onevision,
    "qwen2_vl": tiny_qwen2_vl,
    "qwen2_5_vl": tiny_qwen2_5_vl,
}


def build_tiny_vlm(family: str, path: str | Path) -> Path:
    """Build and save the tiny model of ``family`` (a key of :data:`TINY_FACTORIES`) at ``path``."""
    if family not in TINY_FACTORIES:
        raise KeyError(f"no tiny model for {family!r}; choose one of {', '.join(TINY_FACTORIES)}")
    return TINY_FACTORIES[family](path)
