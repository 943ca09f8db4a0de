"""The correction loop: latent edits, keep-best verification, outputs, the CLI and `eval loop`.

The tiny world pipeline draws noise, so these tests check behaviour that does not depend on a
trained model: which image is kept, what is written, that edits touch only what they should.
"""

import json
import os
import subprocess
import sys

import pytest
import torch
from PIL import Image

from selfcorrect.cli import main
from selfcorrect.critics.verdicts import Finding, ImageVerdict
from selfcorrect.diffusion.edits import (
    EditConfig,
    EditOp,
    apply_edits,
    background_latent,
    compose,
    salient_boxes,
    salient_patch,
)
from selfcorrect.diffusion.expected import Expected
from selfcorrect.diffusion.generate import NonFiniteLatentsError
from selfcorrect.diffusion.loop import LoopConfig, correct
from selfcorrect.diffusion.outputs import append_pairs, contact_sheet, load_pairs, write_outputs
from selfcorrect.diffusion.presets import load_pipeline
from selfcorrect.world.grammar import parse_prompt

FAST = EditConfig(steps=4, guidance=3.0, strength=0.5)


class ScriptedCritic:
    """Returns the scores it is given, one per call; findings fail every requirement."""

    def __init__(self, scores, requirements=2, threshold=0.9):
        self.scores, self.calls, self.requirements, self.threshold = list(scores), 0, requirements, threshold

    def critique(self, image, prompt):
        score = self.scores[min(self.calls, len(self.scores) - 1)]
        self.calls += 1
        findings = [
            Finding(f"requirement {i}", score >= self.threshold, score) for i in range(self.requirements)
        ]
        return ImageVerdict(score, score >= self.threshold, findings, critic="scripted")


class Blind:
    """A detector that finds nothing (so the planner adds every object)."""

    def detect(self, image, phrases):
        return {p: [] for p in phrases}


@pytest.fixture(scope="module")
def pipe(tiny_world_pipeline):
    return load_pipeline("world", tiny_world_pipeline).pipeline


def run_loop(pipe, scores, prompt="two red circles and a blue square", rounds=3):
    expected = Expected.from_requirements(parse_prompt(prompt))
    return correct(
        pipe,
        prompt,
        expected=expected,
        detector=Blind(),
        critic=ScriptedCritic(scores),
        config=LoopConfig(rounds=rounds, edit=FAST),
        seed=3,
    )


def test_salient_patch_and_compose_on_synthetic_latents():
    latents = torch.zeros(4, 16, 16)
    latents[:, 2:6, 3:7] = 5.0  # an "object"
    patch, mask, window = salient_patch(latents, background_latent(latents, []))
    assert mask.sum() >= 16 and (patch[:, mask] != 0).any() and window[0] <= 2 and window[3] >= 7
    move = EditOp("move", "thing", target=(0.6, 0.6, 0.85, 0.85), source=(3 / 16, 2 / 16, 7 / 16, 6 / 16))
    edited, changed = compose(latents, [move], {}, [move.source])
    assert edited[:, 2:6, 3:7].abs().max() == 0  # the old place is background now
    assert edited[:, 9:14, 9:14].max() == 5.0  # the object is at its new centre
    assert changed[2:6, 3:7].all() and not changed[0, 15]
    gone, _ = compose(latents, [EditOp("delete", "thing", source=move.source)], {}, [move.source])
    assert gone.abs().max() == 0


def test_edits_anchor_unedited_latents_and_are_seeded(pipe):
    torch.manual_seed(0)
    latents = torch.randn(4, 16, 16)
    op = EditOp("delete", "thing", source=(0.0, 0.0, 0.25, 0.25))
    a = apply_edits(pipe, latents, "a circle", [op], [op.source], FAST, seed=1)
    b = apply_edits(pipe, latents, "a circle", [op], [op.source], FAST, seed=1)
    assert a.latents.shape == (4, 16, 16) and torch.isfinite(a.latents).all()
    assert torch.equal(a.latents, b.latents) and a.image.size == (64, 64)
    assert a.mask[:4, :4].all() and not a.mask[8:, 8:].any()


def test_an_edit_the_critic_scores_worse_is_rolled_back(pipe):
    trace = run_loop(pipe, [0.5, 0.3, 0.7, 0.6])
    assert [r["accepted"] for r in trace.rounds] == [False, True, False]
    assert trace.best == 2 and trace.final.score == pytest.approx(0.7)
    assert trace.scores == pytest.approx([0.5, 0.3, 0.7, 0.6])
    assert trace.final.image is trace.images[2]
    assert max(trace.scores) == trace.final.score >= trace.scores[0]  # keep-best
    assert [r["seed"] for r in trace.rounds] == [1003, 2003, 3003]
    plan = trace.rounds[0]["plan"]
    assert [op["kind"] for op in plan] == ["add", "add", "add"]
    assert trace.rounds[0]["timings"]["edit"] > 0 and trace.stopped == "rounds"


def test_the_loop_stops_when_the_critic_passes(pipe):
    trace = run_loop(pipe, [0.95])
    assert trace.stopped == "passed" and len(trace.images) == 1 and "plan" not in trace.rounds[0]
    trace = run_loop(pipe, [0.5, 0.95])
    assert trace.stopped == "passed" and len(trace.images) == 2 and trace.best == 1


def test_nothing_to_edit_stops_the_loop(pipe):
    prompt = "two red circles and a blue square"
    critic = ScriptedCritic([0.5], requirements=2)
    critic.critique = lambda image, prompt: ImageVerdict(
        0.5, False, [Finding("a", True, 0.9), Finding("b", True, 0.9)], critic="x"
    )  # fails overall, but every requirement passes: the plan is empty
    trace = correct(
        pipe,
        prompt,
        expected=Expected.from_requirements(parse_prompt(prompt)),
        detector=Blind(),
        critic=critic,
        config=LoopConfig(rounds=3, edit=FAST),
    )
    assert trace.stopped == "nothing to edit" and trace.rounds[0]["plan"] == []


def test_a_given_planner_replaces_the_rules(pipe):
    from selfcorrect.diffusion.controller import Controller, LayoutPlanner

    prompt = "a red circle"
    box = (0.6, 0.6, 0.85, 0.85)
    answer = json.dumps({"objects": [{"phrase": "red circle", "box": list(box)}]})
    planner = LayoutPlanner(Controller(lambda messages: answer))
    trace = correct(
        pipe,
        prompt,
        expected=Expected.from_requirements(parse_prompt(prompt)),
        detector=Blind(),
        critic=ScriptedCritic([0.5], requirements=1),
        config=LoopConfig(rounds=1, edit=FAST),
        planner=planner,
    )
    assert [(op["kind"], op["target"]) for op in trace.rounds[0]["plan"]] == [("add", list(box))]
    assert planner.fallbacks == []


def test_nan_latents_during_an_edit_are_refused(pipe, monkeypatch):
    real = pipe.unet.forward

    def broken(*args, **kwargs):
        out = real(*args, **kwargs)
        out[0].fill_(float("nan"))
        return out

    latents = torch.randn(4, 16, 16)
    op = EditOp("delete", "thing", source=(0.0, 0.0, 0.5, 0.5))
    monkeypatch.setattr(pipe.unet, "forward", broken)
    with pytest.raises(NonFiniteLatentsError, match="NaN"):
        apply_edits(pipe, latents, "a circle", [op], [], FAST, seed=0)


def test_outputs_trace_sheet_and_loadable_pairs(pipe, tmp_path):
    trace = run_loop(pipe, [0.5, 0.3, 0.7], rounds=2)
    write_outputs(trace, tmp_path / "run", {"critic": "scripted"})
    record = json.loads((tmp_path / "run" / "trace.json").read_text())
    assert record["scores"] == pytest.approx([0.5, 0.3, 0.7]) and record["best"] == 2
    assert record["rounds"][0]["critique"]["score"] == 0.5 and record["critic"] == "scripted"
    assert Image.open(tmp_path / "run" / "rounds.png").size == contact_sheet(trace).size
    assert contact_sheet(trace).size[0] == 3 * 192
    assert append_pairs(trace, tmp_path / "pairs", "scripted") == 2
    pairs = load_pairs(tmp_path / "pairs")
    assert len(pairs) == 2
    first, second = pairs[0], pairs[1]
    # Round 1 (0.3) lost to the first image (0.5); round 2 (0.7) beat the first image.
    assert (first["chosen_score"], first["rejected_score"], first["accepted"]) == (0.5, 0.3, False)
    assert (second["chosen_score"], second["rejected_score"], second["accepted"]) == (0.7, 0.5, True)
    assert first["chosen"].size == (64, 64) and "requirement 0" in first["evidence"]
    with pytest.raises(FileNotFoundError):
        load_pairs(tmp_path / "nowhere")


def run_cli(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_generate_corrects_and_writes_everything(tiny_world_pipeline, tmp_path, capsys):
    out = tmp_path / "run"
    code, stdout, err = run_cli(
        capsys,
        "generate",
        "a red circle",
        "-o",
        out,
        "--source",
        tiny_world_pipeline,
        "--steps",
        "3",
        "--rounds",
        "1",
    )
    assert code == 0, err
    record = json.loads((out / "trace.json").read_text())
    assert (
        record["critic"] == "detection"
        and record["detector"] == "clip-proposals"
        and record["attention"] == "sdpa"
    )
    assert record["expected"]["objects"][0] == {
        "noun": "circle",
        "attributes": ["red"],
        "count": 1,
        "exact": False,
    }
    assert len(record["scores"]) >= 1 and (out / "rounds.png").is_file() and (out / "image.png").is_file()
    assert "critic detection scores" in stdout
    # Correct a given image.
    code, _, err = run_cli(
        capsys,
        "generate",
        "a red circle",
        "-o",
        tmp_path / "given",
        "--input",
        out / "image.png",
        "--source",
        tiny_world_pipeline,
        "--steps",
        "3",
        "--rounds",
        "1",
    )
    assert code == 0, err and (tmp_path / "given" / "trace.json").is_file()


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--rounds", "-1"], "--rounds"),
        (["--strength", "0"], "--strength"),
        (["--critic", "lookback"], "cannot judge images"),
        (["--input", "missing.png"], "missing.png"),
        (["--planner", "controller"], "--controller MODEL"),
    ],
)
def test_generate_bad_input_exits_2(tiny_world_pipeline, tmp_path, capsys, argv, message):
    code, _, err = run_cli(
        capsys, "generate", "a red circle", "-o", tmp_path / "x", "--source", tiny_world_pipeline, *argv
    )
    assert code == 2 and message in err and "Traceback" not in err
    assert not (tmp_path / "x" / "image.png").exists()


def test_batch_skips_bad_prompts_and_resumes(tiny_world_pipeline, tmp_path, capsys):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red circle\n# a comment\na hexagon\n\ntwo blue squares\n")
    out = tmp_path / "batch"
    argv = [
        "generate",
        "--prompts",
        prompts,
        "-o",
        out,
        "--source",
        tiny_world_pipeline,
        "--steps",
        "3",
        "--rounds",
        "1",
        "--no-progress",
    ]
    code, stdout, _ = run_cli(capsys, *argv)
    assert code == 0 and "2 corrected, 0 already done, 1 failed" in stdout
    failure = json.loads((out / "failures-0.jsonl").read_text().splitlines()[0])
    assert failure["prompt"] == "a hexagon" and "hexagon" in failure["error"]
    done = sorted(p.name for p in out.iterdir() if (p / "trace.json").is_file())
    assert done == ["0000-a-red-circle", "0002-two-blue-squares"]
    stamp = (out / done[0] / "trace.json").stat().st_mtime_ns
    code, stdout, _ = run_cli(capsys, *argv)  # the rerun only retries what is left
    assert "0 corrected, 2 already done, 1 failed" in stdout
    assert (out / done[0] / "trace.json").stat().st_mtime_ns == stamp
    code, _, err = run_cli(capsys, "generate", "-o", out, "--source", tiny_world_pipeline)
    assert code == 2 and "PROMPT" in err


def test_batch_splits_across_two_processes_with_accelerate(tiny_world_pipeline, tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red circle\na blue square\na green triangle\n")
    out = tmp_path / "parallel"
    command = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--multi_gpu",
        "--num_processes",
        "2",
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        "-m",
        "selfcorrect.cli",
        "generate",
        "--prompts",
        str(prompts),
        "-o",
        str(out),
        "--source",
        str(tiny_world_pipeline),
        "--steps",
        "2",
        "--rounds",
        "1",
        "--no-progress",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "3 corrected, 0 already done, 0 failed" in done.stdout
    assert len([p for p in out.iterdir() if (p / "trace.json").is_file()]) == 3
    # Both processes worked: each wrote its own pairs file (possibly empty) or its own folders.
    assert {p.name for p in (out / "pairs").glob("pairs-*.jsonl")} == {"pairs-0.jsonl", "pairs-1.jsonl"}


def test_eval_loop_reports_before_and_after(tiny_world_pipeline, tmp_path, capsys):
    path = tmp_path / "loop.json"
    code, stdout, err = run_cli(
        capsys,
        "eval",
        "loop",
        "--limit",
        "1",
        "--seeds",
        "1",
        "--rounds",
        "1",
        "--json",
        path,
        "--source",
        tiny_world_pipeline,
        "--steps",
        "2",
    )
    assert code == 0, err
    result = json.loads(path.read_text())
    assert result["images"] == 7 and set(result["categories"]) >= {"counting", "negation"}
    for part in result["categories"].values():
        assert 0 <= part["before"] <= 1 and 0 <= part["after"] <= 1
        assert part["gain"] == pytest.approx(part["after"] - part["before"], abs=1e-4)
    assert len(result["overall_after_round"]) == 1 and result["median_seconds_per_prompt"] > 0
    assert result["command"].startswith("selfcorrect eval loop")
    assert path.with_suffix(".md").read_text().count("| before |") == 1
    assert path.with_name("loop_before_after.png").is_file()


def test_salient_boxes_find_blobs():
    latents = torch.zeros(4, 16, 16)
    latents[:, 2:6, 3:7] = 5.0
    latents[:, 10:13, 10:14] = -4.0
    boxes = sorted(salient_boxes(latents))
    assert boxes == [(3 / 16, 2 / 16, 7 / 16, 6 / 16), (10 / 16, 10 / 16, 14 / 16, 13 / 16)]
    assert salient_boxes(torch.zeros(4, 16, 16)) == []


@pytest.mark.parametrize("build", ["tiny_sd_pipeline", "tiny_sdxl_pipeline"])
def test_edits_run_on_sd_and_sdxl_pipelines(build):
    from selfcorrect.diffusion import testing

    sd = getattr(testing, build)()
    size = sd.vae_scale_factor * sd.unet.config.sample_size
    latents = torch.randn(4, size // sd.vae_scale_factor, size // sd.vae_scale_factor)
    ops = [
        EditOp("add", "a cat", target=(0.5, 0.5, 0.9, 0.9)),
        EditOp("delete", "a dog", source=(0.0, 0.0, 0.3, 0.3)),
    ]
    edited = apply_edits(sd, latents, "a cat", ops, [ops[1].source], FAST, seed=0)
    assert edited.latents.shape == latents.shape and torch.isfinite(edited.latents).all()
    assert edited.image.size == (size, size) and edited.mask.any()


def test_min_gain_rolls_back_small_improvements(pipe):
    prompt = "a red circle"
    config = LoopConfig(rounds=1, edit=FAST, min_gain=0.05)
    trace = correct(
        pipe,
        prompt,
        expected=Expected.from_requirements(parse_prompt(prompt)),
        detector=Blind(),
        critic=ScriptedCritic([0.5, 0.54], requirements=1),
        config=config,
    )
    assert trace.rounds[0]["accepted"] is False and trace.best == 0


@pytest.mark.parametrize("critic", ["detection", "clip"])
def test_a_clip_critic_shares_the_loop_detectors_clip(critic, monkeypatch):
    """One world CLIP per corrector: the loop's clip-proposals detector lends its model to a
    detection critic (which still keeps weak detections, to grade its findings) or a CLIP critic."""
    import selfcorrect.vision.clip as clip_module
    from selfcorrect.diffusion.runner import Corrector

    loads = []
    real = clip_module.load_world_clip
    monkeypatch.setattr(clip_module, "load_world_clip", lambda *a, **k: loads.append(a) or real(*a, **k))
    corrector = Corrector.build(None, critic=critic, detector="clip-proposals")
    assert len(loads) == 1
    if critic == "detection":
        judge = corrector.critic.detector
        assert judge is not corrector.detector and judge.model is corrector.detector.model
        assert judge.min_probability < corrector.detector.min_probability
    else:
        assert corrector.critic.model is corrector.detector.model


def test_the_vqa_critic_judges_the_world_vlms_relations_and_sizes_from_its_boxes(tmp_path):
    """The world VLM does not answer relation questions but finds objects (its model card), so the
    loop's VQA critic judges its relations and sizes from boxes; any other VLM is asked them."""
    from selfcorrect.diffusion.runner import Corrector
    from selfcorrect.vision.testing import build_tiny_vlm

    world = Corrector.build(None, critic="vqa", detector="clip-proposals")
    assert (world.critic.relations, world.critic.sizes) == ("boxes", "boxes")
    other = Corrector.build(
        None, critic="vqa", detector="clip-proposals", vlm=str(build_tiny_vlm("llava", tmp_path))
    )
    assert (other.critic.relations, other.critic.sizes) == ("ask", "ask")
