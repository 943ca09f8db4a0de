"""Detectors: the VLM grounding detector (fake VLM for the parsing, tiny LLaVA for the plumbing) and
OWLv2 (a tiny random ``Owlv2ForObjectDetection`` saved and loaded through ``from_pretrained``).

Nothing is downloaded. The random OWLv2 finds nonsense, so its tests check structure (keys, order,
ranges, threshold, NMS); the exact numbers are checked on hand-made predictions.
"""

import pytest
import torch
from PIL import Image

from selfcorrect.critics import prompts as P
from selfcorrect.errors import SelfcorrectError
from selfcorrect.vision.detectors import (
    DETECTORS,
    Detection,
    Detector,
    DetectorInputError,
    Owlv2Detector,
    VLMGroundingDetector,
    box_iou,
    load_detector,
    square_to_image_boxes,
)
from selfcorrect.vision.vlm import ModelFormatError, ModelNotFoundError

RED = Image.new("RGB", (32, 32), (220, 30, 30))
WIDE = Image.new("RGB", (200, 100), (30, 30, 220))
TALL = Image.new("RGB", (40, 64), (30, 200, 30))


def _well_formed(found: dict, phrases) -> None:
    assert list(found) == list(dict.fromkeys(phrases))
    for phrase, detections in found.items():
        assert all(isinstance(d, Detection) and d.phrase == phrase for d in detections)
        assert all(
            0.0 <= d.box[0] < d.box[2] <= 1.0 and 0.0 <= d.box[1] < d.box[3] <= 1.0 for d in detections
        )
        scores = [d.score for d in detections]
        assert scores == sorted(scores, reverse=True) and all(0.0 <= s <= 1.0 for s in scores)


# ----------------------------------------------------------------------------------- Detection


def test_detection_checks_and_serialises():
    d = Detection("red circle", (0.1, 0.2, 0.3, 0.4), 0.5)
    assert d.to_dict() == {"phrase": "red circle", "box": [0.1, 0.2, 0.3, 0.4], "score": 0.5}
    with pytest.raises(ValueError, match="normalised"):
        Detection("x", (0.3, 0.2, 0.1, 0.4), 0.5)
    with pytest.raises(ValueError, match="normalised"):
        Detection("x", (0.1, 0.2, 1.3, 0.4), 0.5)
    with pytest.raises(ValueError, match="score"):
        Detection("x", (0.1, 0.2, 0.3, 0.4), 1.5)
    assert box_iou((0, 0, 2, 2), (1, 1, 3, 3)) == pytest.approx(1 / 7)
    assert box_iou((0, 0, 1, 1), (2, 2, 3, 3)) == 0.0


# ------------------------------------------------------------------------------ VLM grounding


class FakeVLM:
    """Answers grounding questions from a table ``{(image id, phrase): text}``; records calls."""

    def __init__(self, answers: dict):
        self.answers = answers
        self.calls = []

    def chat(self, images, messages, **options):
        self.calls.append({"images": images, "messages": messages, **options})
        out = []
        for image, message in zip(images, messages):
            phrase = message.removeprefix("Find every ").removesuffix(". Answer with bounding boxes.")
            out.append(self.answers.get((id(image), phrase), P.NO_BOXES))
        return out


def test_vlm_detector_parses_boxes_in_one_batched_call():
    answers = {
        (id(RED), "red circle"): "[10, 20, 30, 40], [50, 50, 90, 80]",
        (id(RED), "blue square"): "None",
        (id(RED), "green cross"): "I cannot see one, sorry.",  # malformed: no box
        # a repeat (IoU > 0.9 with the first) is dropped; a box overlapping less is kept
        (id(WIDE), "circle"): "[10, 10, 50, 50], [10, 10, 50, 51], [30, 10, 70, 50]",
    }
    vlm = FakeVLM(answers)
    detector = VLMGroundingDetector(vlm, max_new_tokens=32, batch_size=4)
    assert isinstance(detector, Detector)
    found = detector.detect_many([RED, WIDE], [["red circle", "blue square", "green cross"], ["circle"]])

    assert len(vlm.calls) == 1
    call = vlm.calls[0]
    assert call["messages"] == [
        P.GROUND.format(phrase=p) for p in ("red circle", "blue square", "green cross")
    ] + [P.GROUND.format(phrase="circle")]
    assert call["max_new_tokens"] == 32 and call["batch_size"] == 4 and "do_sample" not in call
    assert [id(im) for im in call["images"]] == [id(RED)] * 3 + [id(WIDE)]

    red, wide = found
    _well_formed(red, ["red circle", "blue square", "green cross"])
    assert [d.box for d in red["red circle"]] == [
        pytest.approx((0.1, 0.2, 0.3, 0.4)),
        pytest.approx((0.5, 0.5, 0.9, 0.8)),
    ]
    assert all(d.score == 1.0 for d in red["red circle"])
    assert red["blue square"] == [] and red["green cross"] == []
    assert detector.last_unparsed == [(0, "green cross", "I cannot see one, sorry.")]  # "None" is an answer
    assert [d.box for d in wide["circle"]] == [
        pytest.approx((0.1, 0.1, 0.5, 0.5)),
        pytest.approx((0.3, 0.1, 0.7, 0.5)),
    ]


def test_vlm_detector_inputs():
    vlm = FakeVLM({(id(RED), "circle"): "[0, 0, 50, 50]"})
    detector = VLMGroundingDetector(vlm)
    # one phrase list shared by all images; repeated phrases asked once
    found = detector.detect_many([RED, RED], ["circle", "circle"])
    assert len(vlm.calls[0]["messages"]) == 2 and [list(f) for f in found] == [["circle"], ["circle"]]
    assert detector.detect(RED, []) == {} and len(vlm.calls) == 1  # nothing to ask: no call
    with pytest.raises(DetectorInputError, match="non-blank"):
        detector.detect(RED, ["circle", "  "])
    with pytest.raises(DetectorInputError, match="goes in a list"):
        detector.detect(RED, "circle")
    with pytest.raises(DetectorInputError, match="2 lists of phrases for 1 images"):
        detector.detect_many([RED], [["a"], ["b"]])
    with pytest.raises(DetectorInputError, match="a list of images"):
        detector.detect_many(RED, [["a"]])
    with pytest.raises(SelfcorrectError, match="image 0"):
        detector.detect("/no/such/image.png", ["circle"])
    with pytest.raises(DetectorInputError, match="phrase"):
        VLMGroundingDetector(vlm, prompt="Find it.")


def test_vlm_detector_with_a_tiny_llava(tmp_path):
    from selfcorrect.vision.testing import build_tiny_vlm
    from selfcorrect.vision.vlm import VLM

    vlm = VLM.from_pretrained(build_tiny_vlm("llava", tmp_path / "llava"))
    detector = load_detector("vlm", vlm=vlm, max_new_tokens=8)
    assert isinstance(detector, VLMGroundingDetector)
    found = detector.detect_many([RED, TALL], [["red circle", "square"], ["cross"]])
    _well_formed(found[0], ["red circle", "square"])
    _well_formed(found[1], ["cross"])


# ------------------------------------------------------------------------------------- OWLv2


def _tiny_owlv2(path):
    """A random OWLv2 (32-px input, 8-px patches: 16 boxes) with a letter-level CLIP tokenizer.

    The tokenizer follows OWLv2's own layout: pad ``!`` is id 0 and the end token has the highest
    id (the text tower pools at the highest id; OWLv2 masks queries whose first id is 0, so
    ``diffusion.testing.tiny_clip_tokenizer``, whose start token is id 0, would mask every query).
    The heads are redrawn small so that boxes and scores are not saturated, and the boxes made large
    so that NMS has overlaps to remove.
    """
    from transformers import (
        CLIPTokenizer,
        Owlv2Config,
        Owlv2ForObjectDetection,
        Owlv2ImageProcessor,
        Owlv2Processor,
    )

    vocab = {"!": 0}
    for letter in "abcdefghijklmnopqrstuvwxyz":
        vocab[letter] = len(vocab)
        vocab[letter + "</w>"] = len(vocab)
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    tokenizer = CLIPTokenizer(vocab=vocab, merges=[], model_max_length=32, pad_token="!")
    layers = {"hidden_size": 32, "intermediate_size": 37, "num_hidden_layers": 1, "num_attention_heads": 2}
    config = Owlv2Config(
        text_config={
            **layers,
            "vocab_size": len(vocab),
            "max_position_embeddings": 32,
            "pad_token_id": 0,
            "bos_token_id": tokenizer.bos_token_id,
            "eos_token_id": tokenizer.eos_token_id,
        },
        vision_config={**layers, "image_size": 32, "patch_size": 8},
        projection_dim=32,
    )
    torch.manual_seed(0)
    model = Owlv2ForObjectDetection(config).eval()
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name.startswith(("box_head", "class_head", "objectness_head")) and parameter.ndim == 2:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.1)
        model.box_head.dense2.bias[2:] += 2.0  # boxes about 0.7 of the side: neighbours overlap
    processor = Owlv2Processor(
        image_processor=Owlv2ImageProcessor(size={"height": 32, "width": 32}), tokenizer=tokenizer
    )
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def owlv2_path(tmp_path_factory):
    return _tiny_owlv2(tmp_path_factory.mktemp("owlv2"))


def test_owlv2_detects_through_from_pretrained(owlv2_path):
    detector = Owlv2Detector.from_pretrained(owlv2_path, threshold=0.0, nms_iou=1.0)
    assert isinstance(detector, Detector) and detector.name == "owlv2"
    phrases = [["red circle", "square"], ["cross"], []]
    found = detector.detect_many([WIDE, TALL, RED], phrases)
    for f, p in zip(found, phrases):
        _well_formed(f, p)
    assert found[2] == {}
    assert all(len(v) >= 1 for f in found[:2] for v in f.values())  # threshold 0 keeps every box
    # 8-px patches: at most 16 boxes; boxes wholly in the padding (below the 200x100 image) are gone
    assert all(len(v) <= 16 for f in found for v in f.values())
    # the same image and phrase give the same boxes in a batch and alone
    alone = detector.detect(TALL, ["cross"])
    assert [d.box for d in alone["cross"]] == pytest.approx([d.box for d in found[1]["cross"]])

    none = Owlv2Detector.from_pretrained(owlv2_path, threshold=1.01).detect(WIDE, ["red circle"])
    assert none == {"red circle": []}


def test_owlv2_nms_removes_overlapping_boxes_of_a_phrase(owlv2_path):
    everything = Owlv2Detector.from_pretrained(owlv2_path, threshold=0.0, nms_iou=1.0)
    nms = Owlv2Detector(everything.model, everything.processor, threshold=0.0, nms_iou=0.1)
    before = everything.detect(RED, ["circle", "square"])
    after = nms.detect(RED, ["circle", "square"])
    for phrase in ("circle", "square"):
        kept = after[phrase]
        assert 1 <= len(kept) < len(before[phrase])
        assert all(box_iou(a.box, b.box) <= 0.1 for i, a in enumerate(kept) for b in kept[i + 1 :])
        assert kept[0].score == max(d.score for d in before[phrase])


def test_owlv2_select_on_hand_made_predictions(owlv2_path):
    detector = Owlv2Detector.from_pretrained(owlv2_path, threshold=0.3, nms_iou=0.5)
    # (cx, cy, w, h) as fractions of the padded 200x200 square of a 200x100 image
    boxes = torch.tensor(
        [
            [0.25, 0.25, 0.2, 0.2],  # box A: pixels (30, 30)-(70, 70)
            [0.26, 0.25, 0.2, 0.2],  # A shifted 2 px: IoU 0.9 with A
            [0.75, 0.25, 0.2, 0.2],  # box C, far from A
            [0.50, 0.80, 0.2, 0.2],  # wholly in the padding (y 140..180 of a 100-px image)
        ]
    )
    scores = torch.tensor([[0.9, 0.2], [0.8, 0.7], [0.4, 0.6], [0.95, 0.95]])  # (boxes, phrases)
    found = detector._select(scores, boxes, ["dog", "cat"], (200, 100), True)
    assert [(d.score, d.box) for d in found["dog"]] == [
        (pytest.approx(0.9), pytest.approx((0.15, 0.3, 0.35, 0.7))),  # the shifted copy was suppressed
        (pytest.approx(0.4), pytest.approx((0.65, 0.3, 0.85, 0.7))),
    ]
    # NMS is per phrase: "cat" keeps the shifted copy (its best) though "dog" dropped it
    assert [d.score for d in found["cat"]] == [pytest.approx(0.7), pytest.approx(0.6)]
    assert found["cat"][0].box == pytest.approx((0.16, 0.3, 0.36, 0.7))

    detector.exclusive = True  # each box only under its best phrase
    found = detector._select(scores, boxes, ["dog", "cat"], (200, 100), True)
    assert [d.score for d in found["dog"]] == [pytest.approx(0.9)]  # box 1's best phrase is dog, NMS drops it
    assert [d.score for d in found["cat"]] == [pytest.approx(0.6)]


def test_square_to_image_boxes_on_a_wide_image():
    # a 200x100 image is padded at the bottom to a 200x200 square; boxes in square pixels / 200
    square_pixels = torch.tensor(
        [[50.0, 20.0, 150.0, 80.0], [100.0, 60.0, 180.0, 140.0], [0.0, 120.0, 50.0, 190.0]]
    )
    out = square_to_image_boxes(square_pixels / 200, 200, 100)
    expected = torch.tensor(
        [
            [50 / 200, 20 / 100, 150 / 200, 80 / 100],
            [100 / 200, 60 / 100, 180 / 200, 1.0],  # clipped at the image's bottom edge (y 100)
            [0.0, 1.0, 50 / 200, 1.0],  # wholly in the padding: empty
        ]
    )
    assert torch.allclose(out, expected)
    # a tall 40x64 image is padded on the right to 64x64
    out = square_to_image_boxes(torch.tensor([[16.0, 16.0, 48.0, 48.0]]) / 64, 40, 64)
    assert torch.allclose(out, torch.tensor([[16 / 40, 16 / 64, 1.0, 48 / 64]]))


def test_owlv2_errors(owlv2_path, tmp_path, monkeypatch):
    import huggingface_hub.constants

    with pytest.raises(ModelNotFoundError, match="no model folder"):
        Owlv2Detector.from_pretrained(tmp_path / "absent")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(ModelNotFoundError, match="hf download google/owlv2-not-downloaded"):
        Owlv2Detector.from_pretrained("google/owlv2-not-downloaded")
    with pytest.raises(ModelNotFoundError, match="no model folder"):
        load_detector(str(tmp_path / "absent"))

    from selfcorrect.vision.testing import build_tiny_vlm

    with pytest.raises(ModelFormatError, match="not an OWLv2 detector"):
        Owlv2Detector.from_pretrained(build_tiny_vlm("llava", tmp_path / "llava"))
    detector = load_detector(str(owlv2_path), threshold=0.5)
    assert isinstance(detector, Owlv2Detector) and detector.threshold == 0.5
    with pytest.raises(DetectorInputError, match="too long"):
        detector.detect(RED, ["an extraordinarily long phrase for a tiny tokenizer"])


def test_load_detector_names():
    assert set(DETECTORS) == {"vlm", "owlv2", "clip-proposals"}
    with pytest.raises(SelfcorrectError, match="unknown detector 'yolo'; choose one of vlm, owlv2"):
        load_detector("yolo")
    with pytest.raises(DetectorInputError, match="only used by the 'vlm' detector"):
        load_detector("owlv2", vlm=object())
    fake = FakeVLM({})
    assert load_detector("vlm", vlm=fake).vlm is fake


def test_clip_proposals_find_and_label_rendered_objects():
    from selfcorrect.vision.detectors import load_detector
    from selfcorrect.world.render import render
    from selfcorrect.world.scene import Scene, WorldObject

    scene = Scene(
        (
            WorldObject("circle", "red", "large", (0.1, 0.1, 0.4, 0.4)),
            WorldObject("square", "blue", "large", (0.6, 0.55, 0.9, 0.85)),
        )
    )
    detector = load_detector("clip-proposals")
    found = detector.detect(render(scene), ["red circle", "circle", "blue square", "green triangle"])
    assert len(found["red circle"]) == 1 and len(found["circle"]) == 1 and found["green triangle"] == []
    (square,) = found["blue square"]
    assert all(abs(a - b) < 0.05 for a, b in zip(square.box, (0.6, 0.55, 0.9, 0.85)))
    assert 0 < square.score <= 1
    blank = detector.detect(render(Scene(())), ["red circle"])
    assert blank == {"red circle": []}


def test_clip_proposals_check_sizes_and_sum_label_probabilities(monkeypatch):
    import torch

    import selfcorrect.vision.clip as clip_module
    from selfcorrect.vision.detectors import load_detector
    from selfcorrect.world.render import render
    from selfcorrect.world.scene import Scene, WorldObject

    scene = Scene(
        (
            WorldObject("circle", "red", "large", (0.1, 0.1, 0.4, 0.4)),
            WorldObject("circle", "blue", "small", (0.6, 0.6, 0.78, 0.78)),
        )
    )
    detector = load_detector("clip-proposals")
    found = detector.detect(render(scene), ["large circle", "small circle", "circle", "small red circle"])
    assert [len(found[p]) for p in ("large circle", "small circle", "circle", "small red circle")] == [
        1,
        1,
        2,
        0,
    ]
    assert found["large circle"][0].box[0] < 0.2 and found["small circle"][0].box[0] > 0.5

    # a bare noun's probability sums the labels naming it: a region split between two colours of
    # circle is a circle, though neither coloured label reaches min_probability alone
    class Split:
        logit_scale = torch.tensor(0.0)  # softmax at temperature 1 over the logits below

    split = load_detector("clip-proposals", labels=["red circle", "blue circle", "red square"])
    split.model = Split()
    split._text = torch.eye(3)
    monkeypatch.setattr(
        clip_module, "encode_images", lambda m, p, crops: torch.log(torch.tensor([[0.4, 0.4, 0.2]]))
    )
    out = split.detect(render(Scene((scene.objects[0],))), ["circle", "red circle", "square"])
    assert out["red circle"] == [] and out["square"] == []
    assert len(out["circle"]) == 1 and abs(out["circle"][0].score - 0.8) < 1e-5
