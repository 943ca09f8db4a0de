"""The VLM backend end to end on tiny random models of the real classes, loaded from disk.

Every family (LLaVA-1.5, LLaVA-OneVision, Qwen2-VL, Qwen2.5-VL) is built once per module by
``selfcorrect.vision.testing``, saved with ``save_pretrained`` and loaded back through
``VLM.from_pretrained``. Scores are checked against a reference computed the plain transformers
way: the processor on one (image, prompt + continuation), one forward pass, log-softmax gathered
by hand.
"""

import io
import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from selfcorrect.errors import ImageError, SelfcorrectError
from selfcorrect.vision.images import MAX_PIXELS, image_key, load_image
from selfcorrect.vision.testing import TINY_FACTORIES, build_tiny_vlm
from selfcorrect.vision.vlm import (
    VLM,
    WORLD_VLM_DIR,
    ModelFormatError,
    ModelNotFoundError,
    VLMInputError,
    _common_prefix,
)

FAMILIES = sorted(TINY_FACTORIES)
ATOL = 1e-4
PROMPTS = ["Is it red?", "Is there a blue square in the picture?", "How many shapes?"]
# "Yes" and "No" are single tokens; the others are several (byte-level BPE of the tiny tokenizer)
CANDIDATES = ["Yes", "No", "Maybe so", "not at all"]


@pytest.fixture(scope="module")
def paths(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny-vlms")
    return {family: build_tiny_vlm(family, root / family) for family in FAMILIES}


@pytest.fixture(scope="module")
def vlms(paths):
    return {family: VLM.from_pretrained(path) for family, path in paths.items()}


@pytest.fixture(params=FAMILIES)
def vlm(request, vlms):
    return vlms[request.param]


@pytest.fixture(scope="module")
def images():
    """Three images of different sizes, so that anyres / dynamic-resolution token counts differ."""
    rng = np.random.default_rng(0)
    return [
        Image.fromarray(rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)),
        Image.fromarray(rng.integers(0, 256, (56, 28, 3), dtype=np.uint8)),
        Image.fromarray(rng.integers(0, 256, (28, 28, 3), dtype=np.uint8)),
    ]


def vision_tower(vlm):
    return getattr(vlm.model.model, "vision_tower", None) or vlm.model.model.visual


def reference_logprobs(vlm, images, prompt, continuation):
    """log p(continuation | images, prompt) computed the plain way: (n_tokens,)."""
    parts = [{"type": "image"} for _ in images] + [{"type": "text", "text": prompt}]
    text = vlm.processor.apply_chat_template(
        [{"role": "user", "content": parts}], add_generation_prompt=True, tokenize=False
    )
    inputs = vlm.processor(images=[images] if images else None, text=[text], return_tensors="pt")
    tokens = vlm.tokenizer(continuation, add_special_tokens=False)["input_ids"]
    prompt_len = inputs["input_ids"].shape[1]
    inputs["input_ids"] = torch.cat([inputs["input_ids"], torch.tensor([tokens])], dim=1)
    inputs["attention_mask"] = torch.ones_like(inputs["input_ids"])
    if "mm_token_type_ids" in inputs:
        inputs["mm_token_type_ids"] = torch.cat(
            [inputs["mm_token_type_ids"], torch.zeros((1, len(tokens)), dtype=torch.long)], dim=1
        )
    with torch.no_grad():
        logits = vlm.model(**inputs).logits[0]
    logp = torch.log_softmax(logits.float(), dim=-1)
    return torch.stack([logp[prompt_len - 1 + t, token] for t, token in enumerate(tokens)])


# ------------------------------------------------------------------------------------------ chat


def test_chat_returns_strings_and_greedy_is_deterministic(vlm, images):
    messages = [
        "Describe the image.",
        [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Colour?"}],
    ]
    first = vlm.chat(images[:2], messages, max_new_tokens=5)
    assert len(first) == 2 and all(isinstance(a, str) for a in first)
    assert vlm.chat(images[:2], messages, max_new_tokens=5) == first


def test_chat_matches_plain_generate(vlm, images):
    """Our path (features passed in, our padding and positions) decodes what plain generate does."""
    conversation = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": PROMPTS[1]}]}]
    text = vlm.processor.apply_chat_template(conversation, add_generation_prompt=True, tokenize=False)
    inputs = vlm.processor(images=[images[0]], text=[text], return_tensors="pt")
    with torch.no_grad():
        generated = vlm.model.generate(**inputs, max_new_tokens=6, do_sample=False)
    expected = vlm.tokenizer.decode(
        generated[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True
    ).strip()
    # batched with a longer prompt and another image, so that this row is padded
    answers = vlm.chat([images[0], images[1]], [PROMPTS[1], PROMPTS[1] * 3], max_new_tokens=6)
    assert answers[0] == expected


def test_chat_sampling_is_seeded_and_leaves_global_rng_alone(vlm, images):
    state = torch.random.get_rng_state()
    one = vlm.chat([images[0]], ["Say something."], max_new_tokens=6, do_sample=True, temperature=1.5, seed=3)
    two = vlm.chat([images[0]], ["Say something."], max_new_tokens=6, do_sample=True, temperature=1.5, seed=3)
    assert one == two
    assert torch.equal(torch.random.get_rng_state(), state)


# --------------------------------------------------------------------------------------- scoring


def test_score_shape_and_range(vlm, images):
    scores = vlm.score(images, PROMPTS, CANDIDATES)
    assert scores.shape == (3, 4) and scores.dtype == torch.float32
    assert torch.isfinite(scores).all() and (scores <= 0).all()
    mean = vlm.score(images, PROMPTS, CANDIDATES, reduction="mean")
    lengths = vlm.score_details(images, PROMPTS, CANDIDATES).lengths
    torch.testing.assert_close(mean * lengths, scores, atol=ATOL, rtol=0)


def test_score_matches_naive_teacher_forcing(vlm, images):
    details = vlm.score_details(images, PROMPTS, CANDIDATES)
    for b, (image, prompt) in enumerate(zip(images, PROMPTS)):
        for k, candidate in enumerate(CANDIDATES):
            expected = reference_logprobs(vlm, [image], prompt, candidate)
            torch.testing.assert_close(details.token_logprobs[b][k], expected, atol=ATOL, rtol=0)
    # the check has power: the image and the prompt both move the scores
    scores = details.sum
    assert (scores[0] - scores[1]).abs().max() > 1e-2
    assert (vlm.score([images[0]], [PROMPTS[1]], CANDIDATES) - scores[1]).abs().max() > 1e-2


def test_prefixed_inputs_give_teacher_forced_logprobs_of_each_prefix(vlm, images):
    prefixes = [vlm.tokenizer(c, add_special_tokens=False)["input_ids"] for c in CANDIDATES[:3]]
    batches = list(vlm.prefixed_inputs(images, PROMPTS, prefixes, batch_size=2))
    assert [indexes for indexes, _, _ in batches] == [[0, 1], [2]]
    for indexes, inputs, prompt_len in batches:
        with torch.no_grad():
            logp = torch.log_softmax(vlm.model(**inputs).logits.float(), dim=-1)
        for r, b in enumerate(indexes):
            ids = prefixes[b]
            assert inputs["input_ids"][r, prompt_len : prompt_len + len(ids)].tolist() == ids
            got = torch.stack([logp[r, prompt_len - 1 + t, token] for t, token in enumerate(ids)])
            expected = reference_logprobs(vlm, [images[b]], PROMPTS[b], CANDIDATES[b])
            torch.testing.assert_close(got, expected, atol=ATOL, rtol=0)
    with pytest.raises(VLMInputError, match="one prefix per prompt"):
        next(vlm.prefixed_inputs(images, PROMPTS, prefixes[:1]))
    assert vlm.pad_token_id in (vlm.tokenizer.pad_token_id, vlm.tokenizer.eos_token_id)


def test_batch_equals_single(vlm, images):
    batched = vlm.score(images, PROMPTS, CANDIDATES)
    for b in range(len(PROMPTS)):
        single = vlm.score([images[b]], [PROMPTS[b]], CANDIDATES)
        torch.testing.assert_close(single[0], batched[b], atol=ATOL, rtol=0)
    torch.testing.assert_close(
        vlm.score(images, PROMPTS, CANDIDATES, batch_size=2), batched, atol=ATOL, rtol=0
    )


def test_per_prompt_continuations(vlm, images):
    options = [["Yes", "No"], ["A", "B c"], ["10", "1"]]
    scores = vlm.score(images, PROMPTS, options)
    for b, row in enumerate(options):
        torch.testing.assert_close(scores[b], vlm.score([images[b]], [PROMPTS[b]], row)[0], atol=ATOL, rtol=0)


def test_shared_prefix_of_continuations_scored_once_matches_naive(vlm, images):
    """Continuations that start alike (``Final Score: 10`` / ``100``) have their shared tokens
    scored once at the end of the prompt; every token's log-probability is still the plain one,
    rows with prefixes of different lengths batched together, packed or one row per continuation."""
    options = [
        ["The answer is yes", "The answer is no"],
        ["Yes", "No"],
        ["Final Score: 10", "Final Score: 100"],
    ]
    shared = [
        _common_prefix([vlm.tokenizer(t, add_special_tokens=False)["input_ids"] for t in row])
        for row in options
    ]
    assert len(shared[0]) >= 2 and shared[1] == [] and len(shared[2]) >= 2  # the test has power
    for packs in (True, False):
        vlm.packs_continuations = packs
        try:
            details = vlm.score_details(images, PROMPTS, options, batch_size=3)
        finally:
            vlm.packs_continuations = True
        for b, row in enumerate(options):
            for k, candidate in enumerate(row):
                expected = reference_logprobs(vlm, [images[b]], PROMPTS[b], candidate)
                torch.testing.assert_close(details.token_logprobs[b][k], expected, atol=ATOL, rtol=0)


def test_one_row_per_continuation_equals_packed(vlm, images):
    """The fallback for models that cannot pack continuations gives the packed results."""
    packed = vlm.score(images, PROMPTS, CANDIDATES)
    vlm.packs_continuations = False
    try:
        torch.testing.assert_close(vlm.score(images, PROMPTS, CANDIDATES), packed, atol=ATOL, rtol=0)
    finally:
        vlm.packs_continuations = True


def test_whole_processor_path_equals_expansion_path(vlm, images):
    """Processors without the standard expansion hooks are called whole: same scores."""
    expected = vlm.score(images, PROMPTS, CANDIDATES)
    vlm._standard_processor = False
    try:
        torch.testing.assert_close(vlm.score(images, PROMPTS, CANDIDATES), expected, atol=ATOL, rtol=0)
    finally:
        vlm._standard_processor = True


def test_each_image_is_encoded_once(vlm, images):
    """Four prompts about two images (one shown twice as the same object, once as a copy): one
    vision-tower call, on exactly the inputs of the two distinct images."""
    calls = []
    hook = vision_tower(vlm).register_forward_hook(
        lambda module, args, output: calls.append(args[0].shape[0])
    )
    try:
        vlm.score([images[0]], ["a?"], ["Yes"])
        vlm.score([images[1]], ["a?"], ["Yes"])
        first, second = calls
        calls.clear()
        same_object, equal_pixels = images[0], images[0].copy()
        scores = vlm.score(
            [same_object, images[1], same_object, equal_pixels], PROMPTS + ["Red?"], CANDIDATES
        )
        assert calls == [first + second]
        calls.clear()
        many = vlm.score_many(images[0], PROMPTS, CANDIDATES)
        assert calls == [first]
    finally:
        hook.remove()
    torch.testing.assert_close(many[0], scores[0], atol=ATOL, rtol=0)
    torch.testing.assert_close(scores[3], vlm.score([images[0]], ["Red?"], CANDIDATES)[0], atol=ATOL, rtol=0)


def test_text_only_and_multi_image_prompts(vlm, images):
    groups = [[], images[:2], [images[2], images[0]]]
    prompts = ["What is 2 + 2?", "Which image is brighter?", "Same scene?"]
    details = vlm.score_details([g or None for g in groups], prompts, ["4", "the first"])
    for b, (group, prompt) in enumerate(zip(groups, prompts)):
        for k, candidate in enumerate(["4", "the first"]):
            expected = reference_logprobs(vlm, group, prompt, candidate)
            torch.testing.assert_close(details.token_logprobs[b][k], expected, atol=ATOL, rtol=0)
    assert len(vlm.chat([images[:2]], ["Compare them."], max_new_tokens=3)) == 1


# ------------------------------------------------------------------------------------ bad input


@pytest.mark.parametrize(
    ("images_arg", "prompts", "continuations", "match"),
    [
        ("one", ["  "], ["Yes"], "empty"),
        ("one", [""], ["Yes"], "empty"),
        ("two", ["a?"], ["Yes"], "2 images for 1 prompts"),
        ("one", "Is it red?", ["Yes"], "list of prompts"),
        ("one", [], ["Yes"], "no prompts"),
        ("one", ["a?"], [""], "empty once tokenized"),
        ("one", ["a?"], [], "non-empty list"),
        ("one", ["a?", "b?"], [["Yes"], ["Yes", "No"]], "same number"),
        ("one", ["a?"], [["Yes"], ["No"]], "one list of continuations per prompt"),
        ("one", ["Look: <image> <|image_pad|>"], ["Yes"], "placeholder"),
        (
            "one",
            [
                [
                    {
                        "role": "user",
                        "content": [{"type": "image"}, {"type": "image"}, {"type": "text", "text": "a"}],
                    }
                ]
            ],
            ["Yes"],
            "2 image parts",
        ),
    ],
)
def test_bad_score_input(vlms, images, images_arg, prompts, continuations, match):
    vlm = vlms["llava"]
    given = {"one": images[0], "two": images[:2]}[images_arg]
    with pytest.raises(VLMInputError, match=match):
        vlm.score(given, prompts, continuations)


def test_context_overflow_is_refused_before_running(vlm, images):
    calls = []
    hook = vision_tower(vlm).register_forward_hook(lambda *args: calls.append(1))
    try:
        with pytest.raises(VLMInputError, match="too long"):
            vlm.score([images[0]], ["why " * 200], ["Yes"])
        with pytest.raises(VLMInputError, match="too long"):
            vlm.chat([images[0]], ["Hi"], max_new_tokens=vlm.max_positions)
    finally:
        hook.remove()
    assert calls == []


def test_bad_images(vlms, images, tmp_path):
    vlm = vlms["qwen2_vl"]
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    for source, match in [
        (tmp_path / "missing.png", "no such file"),
        (tmp_path, "directory"),
        (corrupt, "not a readable image"),
        (b"garbage", "not a readable image"),
        (Image.new("L", (8000, 7000)), "too large"),
        (np.zeros((4, 4), dtype=np.float32), "not supported"),
        (42, "unsupported image type"),
    ]:
        with pytest.raises(ImageError, match=match) as info:
            vlm.score([images[0], source], ["a?", "b?"], ["Yes"])
        assert "item 1" in str(info.value)
    with pytest.raises(VLMInputError, match="batch_size"):
        vlm.score([images[0]], ["a?"], ["Yes"], batch_size=0)


def test_image_modes_and_sources_are_converted(vlms, images, tmp_path):
    vlm = vlms["llava_onevision"]
    rgb = images[0]
    path = tmp_path / "image.png"
    rgb.save(path)
    buffer = io.BytesIO()
    rgb.save(buffer, format="PNG")
    sources = [
        rgb.convert("RGBA"),
        rgb.convert("P"),
        rgb.convert("L"),
        rgb.convert("CMYK"),
        Image.fromarray(np.asarray(rgb.convert("L"), dtype=np.uint16) * 257),  # 16-bit grey
        str(path),
        buffer.getvalue(),
        np.asarray(rgb),
    ]
    scores = vlm.score(sources, ["a?"] * len(sources), ["Yes"])
    assert torch.isfinite(scores).all()
    # the same pixels by path, bytes, array and object are one image
    assert image_key(load_image(str(path))) == image_key(load_image(buffer.getvalue())) == image_key(rgb)
    torch.testing.assert_close(scores[5:], scores[5:6].expand(3, 1), atol=ATOL, rtol=0)


def test_load_image_rules(tmp_path):
    transparent = Image.new("RGBA", (3, 2), (0, 0, 0, 0))
    assert load_image(transparent).getpixel((0, 0)) == (255, 255, 255)
    assert load_image(Image.new("I;16", (2, 2), 65535)).getpixel((0, 0)) == (255, 255, 255)
    with pytest.raises(ImageError, match="empty"):
        load_image(Image.new("RGB", (0, 3)))
    huge = Image.new("1", (MAX_PIXELS // 1000 + 1, 1000))
    with pytest.raises(ImageError, match="too large"):
        load_image(huge)
    huge.save(tmp_path / "huge.png")  # a few kB on disk: refused from its header, never decoded
    with pytest.raises(ImageError, match="too large"):
        load_image(tmp_path / "huge.png")


# --------------------------------------------------------------------------------------- loading


def test_loading_errors(paths, tmp_path, monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(ModelNotFoundError, match="hf download lmms-lab/not-downloaded-7b-hf") as info:
        VLM.from_pretrained("lmms-lab/not-downloaded-7b-hf")
    assert "HF_HUB_OFFLINE" in str(info.value) and isinstance(info.value, SelfcorrectError)
    with pytest.raises(ModelNotFoundError, match="neither a model folder nor"):
        VLM.from_pretrained("not a model id!")
    with pytest.raises(ModelNotFoundError, match="no model folder"):
        VLM.from_pretrained(tmp_path / "absent")
    with pytest.raises(ModelNotFoundError, match="no config.json"):
        VLM.from_pretrained(tmp_path)
    with pytest.raises(ModelFormatError, match="unknown VLM family"):
        VLM.from_pretrained(paths["llava"], family="llava-next-next")
    with pytest.raises(ModelFormatError, match="not 'qwen2_vl'"):
        VLM.from_pretrained(paths["llava"], family="qwen2_vl")
    with pytest.raises(VLMInputError, match="unknown dtype"):
        VLM.from_pretrained(paths["llava"], dtype="float99")

    weightless = tmp_path / "weightless"
    weightless.mkdir()
    shutil.copy(paths["llava"] / "config.json", weightless)
    with pytest.raises(ModelNotFoundError, match="has no weights"):
        VLM.from_pretrained(weightless)

    pickled = tmp_path / "pickled"
    shutil.copytree(paths["llava"], pickled)
    (pickled / "model.safetensors").rename(pickled / "pytorch_model.bin")
    with pytest.raises(ModelFormatError, match="only pickle weights"):
        VLM.from_pretrained(pickled)

    original = tmp_path / "original"
    original.mkdir()
    config = {"architectures": ["LlavaQwenForCausalLM"], "model_type": "llava", "mm_vision_tower": "siglip"}
    (original / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelFormatError, match="original LLaVA"):
        VLM.from_pretrained(original)


@pytest.mark.skipif((WORLD_VLM_DIR / "config.json").exists(), reason="the world VLM is built")
def test_world_vlm_missing_says_how_to_build_it():
    with pytest.raises(ModelNotFoundError, match="training script"):
        VLM.from_pretrained("world")


def test_family_loader_and_dtype(paths, images):
    vlm = VLM.from_pretrained(paths["qwen2_vl"], family="qwen2_vl", dtype="bfloat16")
    assert vlm.dtype == torch.bfloat16
    assert torch.isfinite(vlm.score([images[0]], ["a?"], ["Yes", "No"])).all()
