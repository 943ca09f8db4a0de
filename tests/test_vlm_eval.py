"""`selfcorrect eval vlm`: grading, box matching, image sources, report, and the CLI.

The trained world VLM does not exist in tests. Behaviour is checked with a VLM-compatible table
(answers looked up by image pixels and prompt, so right and wrong answers are known exactly) and
the CLI end to end with a tiny random LLaVA, whose accuracies are meaningless.
"""

import json
import math

import pytest
import torch
from PIL import Image

from selfcorrect.cli import main
from selfcorrect.world.conversations import answer_text, grounding_answer, grounding_prompt, vqa_prompt
from selfcorrect.world.data import QA_KINDS, relation_parts
from selfcorrect.world.grammar import parse_prompt
from selfcorrect.world.render import render
from selfcorrect.world.sampling import sample_scene
from selfcorrect.world.scene import WorldObject
from selfcorrect.world.vlm_eval import (
    box_iou,
    degraded_samples,
    evaluate_grounded_relations,
    evaluate_grounding,
    evaluate_vlm,
    evaluate_vqa,
    generated_samples,
    grounding_phrase,
    is_right,
    markdown_table,
    match_boxes,
    measure_image_reliance,
    measure_throughput,
    rendered_samples,
)


class TableVLM:
    """Answers from a table ``(image pixels, prompt) -> text``; ``default`` for anything else.

    ``score`` prefers "Yes" exactly where the table's answer is "Yes" (log-probs -0.1 / -2.3).
    """

    def __init__(self, table: dict, default: str = "No"):
        self.table, self.default, self.calls = table, default, []

    def _answer(self, image, prompt) -> str:
        return self.table.get((image.tobytes(), prompt), self.default)

    def chat(self, images, messages, *, max_new_tokens=256, batch_size=8):
        self.calls.append(("chat", len(messages), max_new_tokens))
        return [self._answer(i, m) for i, m in zip(images, messages, strict=True)]

    def score(self, images, prompts, continuations, *, batch_size=8):
        import torch

        self.calls.append(("score", len(prompts), tuple(continuations)))
        rows = [
            [-0.1, -2.3] if self._answer(i, p) == "Yes" else [-2.3, -0.1] for i, p in zip(images, prompts)
        ]
        return torch.tensor(rows)


def perfect_table(samples, period: bool = True) -> dict:
    """The right answer to every question and grounding phrase of ``samples``."""
    table = {}
    for s in samples:
        key = s.image.tobytes()
        for qa in s.qa:
            table[key, vqa_prompt(qa.question)] = answer_text(qa.answer) + ("." if period else "")
        for obj in s.objects:
            phrase, boxes = grounding_phrase(obj, s.objects)
            table[key, grounding_prompt(phrase)] = grounding_answer(boxes)
    return table


@pytest.fixture(scope="module")
def samples():
    return rendered_samples("test", 4)


# ---------------------------------------------------------------------------------------------
# Grading


@pytest.mark.parametrize(
    "answer, expected, right",
    [
        ("Yes", "yes", True),
        (" yes. \n", "yes", True),
        ("No", "yes", False),
        ("Yes, there is.", "yes", False),
        ("2", "2", True),
        ("two", "2", False),
        ("Left of.", "left of", True),
        ("red", "red", True),
        ("orange", "red", False),
        ("", "no", False),
    ],
)
def test_is_right(answer, expected, right):
    assert is_right(answer, expected) is right


def test_box_iou_and_matching_by_hand():
    a, b = (0.0, 0.0, 0.5, 0.5), (0.25, 0.0, 0.75, 0.5)
    # intersection 0.25 x 0.5 = 0.125; union 0.25 + 0.25 - 0.125 = 0.375
    assert math.isclose(box_iou(a, b), 1 / 3)
    assert box_iou(a, (0.6, 0.6, 0.9, 0.9)) == 0.0 and math.isclose(box_iou(a, a), 1.0)
    truth = [(0.0, 0.0, 0.5, 0.5), (0.5, 0.5, 1.0, 1.0)]
    # (0.6, 0.6, 1, 1) has IoU 0.16 / 0.25 = 0.64 with the second; the near-copy of the first
    # (IoU 0.48 / 0.52 = 0.92) is a duplicate: it recalls nothing new and is not a correct box.
    predicted = [(0.0, 0.0, 0.5, 0.5), (0.02, 0.0, 0.52, 0.5), (0.6, 0.6, 1.0, 1.0)]
    assert math.isclose(box_iou(predicted[2], truth[1]), 0.64)
    assert match_boxes(predicted, truth) == (2, 2)
    assert match_boxes([b], truth) == (0, 0)  # IoU 1/3 < 0.5
    assert match_boxes([], truth) == (0, 0) and match_boxes(predicted, []) == (0, 0)


def test_grounding_phrase_is_the_shortest_unique_name():
    small = WorldObject("circle", "red", "small", (0.1, 0.1, 0.25, 0.25))
    large = WorldObject("circle", "red", "large", (0.5, 0.5, 0.8, 0.8))
    cross = WorldObject("cross", "blue", "small", (0.6, 0.1, 0.75, 0.25))
    objects = [small, large, cross]
    assert grounding_phrase(cross, objects) == ("blue cross", [cross.box])
    assert grounding_phrase(small, objects) == ("small red circle", [small.box])
    twin = WorldObject("circle", "red", "small", (0.1, 0.6, 0.25, 0.75))
    assert grounding_phrase(small, [small, twin]) == ("small red circle", [small.box, twin.box])


# ---------------------------------------------------------------------------------------------
# VQA and grounding with known answers


def test_vqa_counts_every_question_by_kind(samples):
    vlm = TableVLM(perfect_table(samples))
    summary, records = evaluate_vqa(vlm, samples, batch_size=4, progress=False)
    asked = [qa.kind for s in samples for qa in s.qa]
    assert summary["questions"] == len(records) == len(asked)
    assert {k: v["n"] for k, v in summary["kinds"].items()} == {
        k: asked.count(k) for k in QA_KINDS if k in asked
    }
    assert {"existence", "count", "relation"} <= set(summary["kinds"])
    assert all(v["accuracy"] == 1.0 for v in summary["kinds"].values()) and summary["overall"] == 1.0
    assert all(max_new == 8 for _, _, max_new in vlm.calls)


def test_vqa_known_wrong_answers(samples):
    # "No" to everything: exactly the no-answers are right, and yes/no questions come in pairs.
    summary, records = evaluate_vqa(TableVLM({}, default="No"), samples, progress=False)
    assert summary["kinds"]["existence"]["accuracy"] == 0.5
    assert summary["kinds"]["relation"]["accuracy"] == 0.5
    assert summary["kinds"]["count"]["accuracy"] == 0.0 and summary["kinds"]["shape"]["accuracy"] == 0.0
    assert all(r["right"] == (r["expected"] == "No") for r in records)


def test_grounding_recall_and_precision(samples):
    table = perfect_table(samples)
    summary, records = evaluate_grounding(TableVLM(table), samples, progress=False)
    n_objects = sum(len(s.objects) for s in samples)
    assert summary["objects"] == n_objects == summary["predicted_boxes"]
    assert summary["recall"] == 1.0 and summary["precision"] == 1.0 and summary["unparsed"] == 0
    # Each box answered twice, the second copy shifted: recall stays, precision halves.
    doubled = {k: f"{v}, {v}" for k, v in table.items() if k[1].startswith("Find")}
    summary, _ = evaluate_grounding(TableVLM(doubled), samples, progress=False)
    assert summary["recall"] == 1.0 and summary["precision"] == 0.5
    # No boxes at all.
    summary, _ = evaluate_grounding(TableVLM({}, default="None"), samples, progress=False)
    assert summary["recall"] == 0.0 and summary["precision"] == 0.0 and summary["unparsed"] == len(records)


def test_relations_from_boxes_follow_the_grounding(samples):
    relations = [(s, relation_parts(qa.question)) for s in samples for qa in s.qa if qa.kind == "relation"]
    assert relations

    def named(phrase, objects):
        *attributes, shape = phrase.split()
        return [
            o.box for o in objects if o.shape == shape and all(w in (o.colour, o.size) for w in attributes)
        ]

    table = {
        (s.image.tobytes(), grounding_prompt(p)): grounding_answer(named(p, s.objects))
        for s, (a, _, b) in relations
        for p in (a, b)
    }
    vlm = TableVLM(table)
    summary, records = evaluate_grounded_relations(vlm, samples, progress=False)
    assert summary == {"accuracy": 1.0, "n": len(relations), "missing": 0}
    asked = sum(n for kind, n, _ in vlm.calls if kind == "chat")
    assert asked == len({(id(s), p) for s, (a, _, b) in relations for p in (a, b)})  # each phrase once
    assert records[0]["boxes"][0] and records[0]["answer"] in ("Yes", "No")
    # Every object found in the same place: no relation holds, so exactly the No answers are right.
    same = {k: "[40, 40, 60, 60]" for k in table}
    summary, _ = evaluate_grounded_relations(TableVLM(same), samples, progress=False)
    assert summary["accuracy"] == 0.5 and summary["missing"] == 0
    summary, _ = evaluate_grounded_relations(TableVLM({}, default="None"), samples, progress=False)
    assert summary == {"accuracy": 0.5, "n": len(relations), "missing": len(relations)}


def test_throughput_times_both_paths_and_agreement(samples):
    vlm = TableVLM(perfect_table(samples, period=False), default="No")
    result = measure_throughput(vlm, samples[:2], batch_size=4)
    yes_no = [qa for s in samples[:2] for qa in s.qa if qa.kind in ("existence", "relation")]
    assert result["images"] == 2 and result["questions"] == len(yes_no)
    assert result["score"]["accuracy"] == 1.0 and result["chat"]["accuracy"] == 1.0
    assert result["agreement"] == 1.0 and result["score"]["images_per_second"] > 0
    # chat always "Yes": right and in agreement with score on the yes half only.
    vlm.chat = lambda images, messages, **options: ["Yes"] * len(messages)
    result = measure_throughput(vlm, samples[:2])
    assert result["chat"]["accuracy"] == 0.5 and result["agreement"] == 0.5


def test_image_reliance_separates_a_reading_model_from_a_blind_one(samples):
    table = perfect_table(samples, period=False)

    class Reader:  # log p(answer) = -0.1 where it is this image's answer, else -2.0
        def score(self, images, prompts, continuations, *, batch_size=8):
            rows = [
                [-0.1 if table.get((i.tobytes(), p)) == c[0] else -2.0]
                for i, p, c in zip(images, prompts, continuations, strict=True)
            ]
            return torch.tensor(rows)

    class Blind:  # the same answer probabilities whatever the image
        def score(self, images, prompts, continuations, *, batch_size=8):
            return torch.full((len(prompts), 1), -0.7)

    reading = measure_image_reliance(Reader(), samples)
    assert reading["questions"] == sum(len(s.qa) for s in samples)
    assert reading["own_image"] == pytest.approx(0.1)
    # the table holds each image's own questions: another scene's image rarely knows the answer
    assert 0.1 < reading["other_image"] <= 2.0
    assert reading["gap"] == pytest.approx(reading["other_image"] - 0.1)
    assert reading["own_more_likely"] > 0.9
    blind = measure_image_reliance(Blind(), samples)
    assert (
        blind["gap"] == 0.0 and blind["own_more_likely"] == 0.0 and blind["own_image"] == pytest.approx(0.7)
    )
    with pytest.raises(ValueError, match="at least 2 images"):
        measure_image_reliance(Blind(), samples[:1])


# ---------------------------------------------------------------------------------------------
# Image sources


def test_scenes_differ_by_split_and_degraded_truth_is_complete():
    test, val = rendered_samples("test", 3), rendered_samples("val", 3)
    assert [s.objects for s in test] == [s.objects for s in rendered_samples("test", 3)]
    assert [s.objects for s in test] != [s.objects for s in val]
    degraded, skipped = degraded_samples("test", 12)
    assert len(degraded) + skipped == 12 and degraded
    for s in degraded:
        assert s.qa and all(o.shape and o.colour and o.size for o in s.objects)
    with pytest.raises(ValueError, match="unknown split"):
        rendered_samples("heldout", 1)


def test_generated_images_are_labelled_by_the_oracle():
    def generate_fn(prompts, seeds):
        images = []
        for prompt, seed in zip(prompts, seeds):
            if seed == 0:  # nothing in it: the oracle reads no object, so it is skipped
                images.append(Image.new("RGB", (64, 64), (128, 128, 128)))
            else:
                images.append(render(sample_scene(parse_prompt(prompt), seed), 64))
        return images

    kept, skipped = generated_samples(generate_fn, "test", 5, chunk=2, progress=False)
    assert len(kept) + skipped == 5 and skipped >= 1 and 0 not in [s.index for s in kept]
    for s in kept:
        assert s.source == "generated" and s.prompt and s.qa
        truth = sample_scene(parse_prompt(s.prompt), s.index).objects
        assert sorted((o.shape, o.colour) for o in s.objects) == sorted((o.shape, o.colour) for o in truth)


def test_evaluate_vlm_report():
    def generate_fn(prompts, seeds):
        return [render(sample_scene(parse_prompt(p), s), 64) for p, s in zip(prompts, seeds)]

    result = evaluate_vlm(
        TableVLM({}, default="Yes"),
        limit=3,
        generate_fn=generate_fn,
        generated=2,
        throughput_images=1,
        ground_max_new_tokens=16,
        progress=False,
    )
    assert sum(result["images"]["generated"].values()) == 2
    assert set(result["vqa"]) == {"render", "degraded", "generated"}
    assert result["images"]["render"] == {"used": 3, "skipped": 0}
    assert result["clip"] == {"skipped": "no CLIP model given"}
    assert result["targets"]["vqa/existence"] == 0.95 and result["throughput"]["images"] == 1
    assert len(result["records"]["vqa"]) == sum(v["questions"] for v in result["vqa"].values())
    json.dumps(result)  # JSON-ready
    table = markdown_table(result)
    assert "| render | 3 |" in table and "≥ 0.95" in table and "skipped: no CLIP model given" in table
    assert result["image_reliance"]["questions"] == result["vqa"]["render"]["questions"]
    assert "**Image reliance**" in table
    assert result["boxed"]["render"]["n"] == result["vqa"]["render"]["kinds"]["relation"]["n"]
    assert "**Relations from the VLM's boxes**" in table and result["records"]["boxed"]
    one = evaluate_vlm(TableVLM({}), limit=1, throughput_images=0, ground_max_new_tokens=16, progress=False)
    assert "skipped" in one["image_reliance"] and "Image reliance** skipped" in markdown_table(one)


# ---------------------------------------------------------------------------------------------
# The command


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_help(capsys):
    with pytest.raises(SystemExit) as e:
        main(["eval", "vlm", "--help"])
    assert e.value.code == 0 and "--generated" in capsys.readouterr().out


def test_missing_model_and_bad_input_exit_2(tmp_path, capsys):
    code, _, err = run(capsys, "eval", "vlm", "--model", str(tmp_path / "nope"), "--generated", "0")
    assert code == 2 and err.startswith("selfcorrect: error: ") and "no model folder" in err
    assert "Traceback" not in err and err.count("\n") == 1
    code, _, err = run(capsys, "eval", "vlm", "--split", "heldout")
    assert code == 2 and "unknown split" in err
    assert run(capsys, "eval", "vlm", "--limit", "0")[0] == 2
    assert run(capsys, "eval", "vlm", "--generated", "-1")[0] == 2


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    import open_clip

    from selfcorrect.train.world_clip import PROFILES, model_config
    from selfcorrect.vision.clip import save_world_clip

    cfg = model_config(PROFILES["tiny"])
    return save_world_clip(open_clip.CLIP(**cfg), cfg, tmp_path_factory.mktemp("clip") / "world-clip")


@pytest.fixture
def one_thread():
    """Tiny models run fastest on one thread: on a busy 2-core machine, thread hand-offs take
    longer than the matrix products (a 96-token greedy answer: 0.6 s instead of 40 s)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_cli_end_to_end_with_a_tiny_llava(tmp_path, capsys, tiny_clip, one_thread):
    from selfcorrect.vision.testing import build_tiny_vlm

    model = build_tiny_vlm("llava", tmp_path / "llava")
    out_json = tmp_path / "results" / "vlm.json"
    argv = ["eval", "vlm", "--model", str(model), "--limit", "2", "--generated", "0", "--throughput", "1"]
    code, _, err = run(capsys, *argv, "--clip", str(tmp_path / "no-clip"))
    assert code == 2 and "no open_clip model folder" in err  # asked for, so not skipped
    code, out, _ = run(capsys, *argv, "--clip", str(tiny_clip), "--json", str(out_json))
    assert code == 0 and "wrote" in out
    result = json.loads(out_json.read_text())
    assert set(result["vqa"]) == {"render", "degraded"} and result["images"]["render"]["used"] == 2
    assert 0.0 <= result["vqa"]["render"]["overall"] <= 1.0
    assert 0.0 <= result["clip"]["accuracy"] <= 1.0 and result["clip"]["scenes"] == 2
    assert result["throughput"]["score"]["seconds"] > 0 and result["throughput"]["chat"]["seconds"] > 0
    assert result["command"].startswith("selfcorrect eval vlm") and result["model"]["device"] == "cpu"
    md = out_json.with_suffix(".md").read_text()
    assert md.startswith("# World VLM") and "selfcorrect eval vlm" in md and "**Grounding**" in md
