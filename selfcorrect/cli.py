"""The ``selfcorrect`` command line.

Every command is a ``make_*`` parser builder plus a ``cmd_*`` function taking the parsed
arguments; heavy modules are imported inside the ``cmd_*`` functions so ``--help`` stays fast.
Exit codes: 0 success, 1 a check that ran and failed (``world check``, ``critique``), 2 bad
input, 3 a critic whose verdict could not be read (``critique``).
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

from selfcorrect import __version__
from selfcorrect.errors import SelfcorrectError


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; returns the exit code (also used in-process by the tests)."""
    parser = make_parser()
    args = parser.parse_args(argv)
    # Recorded in benchmark results, so every number says which command produced it.
    args.command_line = shlex.join(["selfcorrect", *(sys.argv[1:] if argv is None else argv)])
    if not hasattr(args, "func"):
        parser.print_help()
        return 2
    try:
        return args.func(args)
    except SelfcorrectError as e:
        print(f"selfcorrect: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("selfcorrect: interrupted", file=sys.stderr)
        return 130


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="selfcorrect",
        description="Multimodal self-correction: critics, a correction loop, and training from "
        "self-generated data. Runs offline on the embedded world by default.",
    )
    parser.add_argument("--version", action="version", version=f"selfcorrect {__version__}")
    commands = parser.add_subparsers(title="commands", metavar="COMMAND")
    make_generate_parser(commands)
    make_critique_parser(commands)
    make_eval_parser(commands)
    make_world_parser(commands)
    return parser


# ---------------------------------------------------------------------------------------------
# selfcorrect generate / eval


def _add_pipeline_args(p) -> None:
    p.add_argument("--preset", default="world", help="world (default, embedded), sd15, sdxl or sd-turbo")
    p.add_argument(
        "--source", default=None, help="hub id or local directory of the weights (default: the preset's)"
    )
    p.add_argument("--steps", type=int, default=None, help="denoising steps (default: the preset's)")
    p.add_argument(
        "--guidance", type=float, default=None, help="classifier-free guidance scale (default: the preset's)"
    )
    p.add_argument("--size", type=int, default=None, help="image side in pixels (default: the preset's)")
    p.add_argument("--attention", default="auto", help="auto (default), xformers, sdpa or math")
    p.add_argument("--device", default="cpu", help="cpu (default), cuda, cuda:1, ...")
    p.add_argument(
        "--dtype",
        default=None,
        help="float32, float16 or bfloat16 (default: float32 on CPU, float16 on CUDA)",
    )


def make_generate_parser(commands) -> None:
    p = commands.add_parser(
        "generate",
        help="generate an image for a prompt and correct it: detect, critique, plan, edit, verify",
        description="Generate an image for PROMPT and correct it in up to --rounds rounds (SLD-style: "
        "the critic judges, the planner edits the latents, an edit that does not raise the critic's "
        "score is rolled back). Writes image.png (the best image), rounds.png (a contact sheet) and "
        "trace.json; before/after preference pairs go to OUTPUT/pairs.",
    )
    p.add_argument("prompt", nargs="?", help='e.g. "two red circles and a blue square"')
    p.add_argument(
        "-o",
        "--output",
        required=True,
        type=Path,
        help="output directory (image.png, rounds.png, trace.json)",
    )
    p.add_argument("--prompts", type=Path, default=None, help="a text file, one prompt per line (batch mode)")
    p.add_argument(
        "--seed", type=int, default=0, help="seed (default: 0); the same seed gives the same image on CPU"
    )
    p.add_argument("--seeds", type=int, default=1, help="batch mode: seeds per prompt (default: 1)")
    p.add_argument("--rounds", type=int, default=3, help="correction rounds (default: 3; 0: generate only)")
    p.add_argument("--input", type=Path, default=None, help="correct this image instead of generating one")
    p.add_argument(
        "--critic",
        default="detection",
        help="detection (default: the best critic in eval critics; judges with the detector), clip, vqa "
        "or llava_critic",
    )
    p.add_argument(
        "--detector",
        default=None,
        help="clip-proposals (default for the world preset), owlv2 (default otherwise), vlm (the VLM's "
        "grounding) or an OWLv2 checkpoint",
    )
    p.add_argument("--vlm", default=None, help="VLM for the critic and detector (default: the world VLM)")
    p.add_argument(
        "--controller",
        default=None,
        help="a chat model (hub id or folder) that parses free-text prompts (default: the world grammar)",
    )
    p.add_argument(
        "--planner",
        choices=("rules", "controller"),
        default="rules",
        help="rules (default: the deterministic planner) or controller (the --controller model proposes "
        "each round's layout, validated; rules plan a round whose answers fail)",
    )
    p.add_argument(
        "--strength", type=float, default=None, help="how much of the schedule an edit re-runs (default: 0.5)"
    )
    p.add_argument(
        "--min-gain",
        type=float,
        default=0.0,
        help="keep an edit only if the score rises by more (default: 0)",
    )
    p.add_argument("--no-pairs", action="store_true", help="do not write preference pairs")
    p.add_argument("--no-progress", action="store_true", help="no progress bar in batch mode")
    _add_pipeline_args(p)
    p.set_defaults(func=cmd_generate)


def make_eval_parser(commands) -> None:
    evaluate = commands.add_parser("eval", help="benchmarks on the embedded world, graded by the oracle")
    sub = evaluate.add_subparsers(title="eval commands", metavar="COMMAND")
    p = sub.add_parser("t2i", help="GenEval-style accuracy of a text-to-image model on a prompt suite")
    p.add_argument("--split", default="test", help="suite split (default: test); held-out combos are added")
    p.add_argument("--seeds", type=int, default=4, help="images per prompt (default: 4, as GenEval)")
    p.add_argument("--limit", type=int, default=None, help="at most N prompts per category")
    p.add_argument("--batch-size", type=int, default=32, help="images per pipeline call (default: 32)")
    p.add_argument("--json", type=Path, default=None, help="write results here (+ a .md table beside it)")
    _add_pipeline_args(p)
    p.set_defaults(func=cmd_eval_t2i)

    p = sub.add_parser(
        "loop", help="oracle accuracy before and after the correction loop, per category, with its costs"
    )
    p.add_argument("--split", default="test", help="suite split (default: test)")
    p.add_argument("--seeds", type=int, default=4, help="images per prompt (default: 4)")
    p.add_argument("--limit", type=int, default=None, help="at most N prompts per category")
    p.add_argument("--rounds", type=int, default=3, help="correction rounds (default: 3)")
    p.add_argument("--critic", default="detection", help="the critic driving the loop (default: detection)")
    p.add_argument("--detector", default=None, help="the loop's detector (default: clip-proposals)")
    p.add_argument("--vlm", default=None, help="VLM for the critic and detector (default: the world VLM)")
    p.add_argument("--strength", type=float, default=None, help="edit strength (default: 0.5)")
    p.add_argument(
        "--min-gain",
        type=float,
        default=0.0,
        help="keep an edit only if the score rises by more (default: 0)",
    )
    p.add_argument(
        "--json", type=Path, default=None, help="write results here (+ .md and a _before_after.png)"
    )
    _add_pipeline_args(p)
    p.set_defaults(func=cmd_eval_loop)

    p = sub.add_parser(
        "vlm", help="VQA, grounding, CLIP hard negatives and score-vs-chat speed of the world VLM"
    )
    p.add_argument(
        "--split", default="test", help="train, val or test: scene seed and prompt suite (default: test)"
    )
    p.add_argument("--limit", type=int, default=200, help="scenes per image source (default: 200)")
    p.add_argument(
        "--generated",
        type=int,
        default=64,
        help="images of the world text-to-image model to label with the oracle and ask about "
        "(default: 64; 0: none)",
    )
    p.add_argument("--model", default="world", help="world (default), a model folder or a Hugging Face id")
    p.add_argument(
        "--clip",
        type=Path,
        default=None,
        help="open_clip model folder (default: the world CLIP, skipped if absent)",
    )
    p.add_argument(
        "--t2i-source",
        default=None,
        help="text-to-image weights for --generated (default: the world preset's)",
    )
    p.add_argument(
        "--throughput",
        type=int,
        default=32,
        help="renders whose yes/no questions are timed (default: 32; 0: none)",
    )
    p.add_argument("--batch-size", type=int, default=16, help="prompts per VLM batch (default: 16)")
    p.add_argument("--device", default="cpu", help="cpu (default), cuda, cuda:1, ...")
    p.add_argument("--json", type=Path, default=None, help="write results here (+ a .md table beside it)")
    p.set_defaults(func=cmd_eval_vlm)

    p = sub.add_parser(
        "critics",
        help="meta-evaluation of the critics against the oracle: pass/fail, pairwise, LookBack step F1, speed",
    )
    p.add_argument(
        "--split", default="test", help="train, val or test: prompt suite and scene seed (default: test)"
    )
    p.add_argument(
        "--limit",
        type=int,
        default=50,
        help="prompts of the split; each gives two renders (passing, failing) and --seeds generated "
        "images (default: 50)",
    )
    p.add_argument(
        "--seeds",
        type=int,
        default=2,
        help="images of the world text-to-image model per prompt (default: 2; 0: renders only)",
    )
    p.add_argument(
        "--chains",
        type=int,
        default=None,
        help="reasoning chains for LookBack vs plain (default: --limit; 0: none)",
    )
    p.add_argument(
        "--captions",
        type=int,
        default=200,
        help="captions for TLDR, half of them one-edit negatives (default: 200; 0: none)",
    )
    p.add_argument(
        "--critics",
        default=",".join(EVAL_CRITICS),
        help=f"comma-separated subset of {','.join(EVAL_CRITICS)} (default: all)",
    )
    p.add_argument("--vlm", default="world", help="world (default), a model folder or a Hugging Face id")
    p.add_argument(
        "--clip",
        type=Path,
        default=None,
        help="open_clip model folder (default: the world CLIP, skipped if absent)",
    )
    p.add_argument(
        "--detector",
        default="clip-proposals",
        help="the detection critic's detector: clip-proposals (default), owlv2, vlm or an OWLv2 checkpoint",
    )
    p.add_argument(
        "--t2i-source", default=None, help="text-to-image weights for --seeds (default: the world preset's)"
    )
    p.add_argument(
        "--max-new-tokens",
        type=int,
        default=None,
        help="longest text the generating critics write (default: each critic's)",
    )
    p.add_argument("--batch-size", type=int, default=16, help="prompts per VLM batch (default: 16)")
    p.add_argument("--device", default="cpu", help="cpu (default), cuda, cuda:1, ...")
    p.add_argument("--json", type=Path, default=None, help="write results here (+ a .md table beside it)")
    p.set_defaults(func=cmd_eval_critics)


def _load(args):
    """Validate the common pipeline arguments, then load the pipeline (the slow part)."""
    from selfcorrect.diffusion.presets import PRESET_DEFAULTS, load_pipeline

    if args.steps is not None and not 1 <= args.steps <= 1000:
        raise SelfcorrectError(f"--steps must be between 1 and 1000, got {args.steps}")
    if args.guidance is not None and not 0.0 <= args.guidance <= 50.0:
        raise SelfcorrectError(f"--guidance must be between 0 and 50, got {args.guidance}")
    if args.size is not None and (not 16 <= args.size <= 2048 or args.size % 8):
        raise SelfcorrectError(f"--size must be a multiple of 8 between 16 and 2048, got {args.size}")
    if args.preset not in PRESET_DEFAULTS:
        raise SelfcorrectError(f"unknown preset {args.preset!r}; presets are {', '.join(PRESET_DEFAULTS)}")
    loaded = load_pipeline(
        args.preset, args.source, dtype=args.dtype, device=args.device, attention=args.attention
    )
    steps = args.steps or loaded.defaults.num_inference_steps
    guidance = loaded.defaults.guidance_scale if args.guidance is None else args.guidance
    size = args.size or loaded.defaults.resolution
    return loaded, steps, guidance, size


def _pipeline_record(loaded, steps: int, guidance: float, size: int) -> dict:
    """What ran, for every output that holds generated images."""
    return {
        "preset": loaded.preset,
        "source": loaded.source,
        "steps": steps,
        "guidance": guidance,
        "size": size,
        "device": loaded.device,
        "dtype": loaded.dtype,
        "attention": loaded.attention,
    }


def cmd_generate(args) -> int:
    import time

    from selfcorrect.io import save_image, write_json

    if (args.prompt is None) == (args.prompts is None):
        raise SelfcorrectError("give either a PROMPT or --prompts FILE")
    if args.rounds < 0:
        raise SelfcorrectError(f"--rounds must be 0 or more, got {args.rounds}")
    if args.strength is not None and not 0.0 < args.strength <= 1.0:
        raise SelfcorrectError(f"--strength must be in (0, 1], got {args.strength}")
    if args.planner == "controller" and not args.controller:
        raise SelfcorrectError("--planner controller needs a chat model: --controller MODEL")
    if args.output is None:
        from selfcorrect.diffusion.outputs import slug

        args.output = Path("out") / (slug(args.prompt) if args.prompt else args.prompts.stem)
    if args.output.exists() and not args.output.is_dir():
        raise SelfcorrectError(f"cannot write into {args.output}: it is a file, not a directory")
    prompts = _read_prompts(args.prompts) if args.prompts else [args.prompt]
    if args.prompts is None and args.preset == "world" and not args.controller:
        # The world model only knows the world grammar: refuse early and clearly.
        from selfcorrect.world.grammar import parse_prompt

        parse_prompt(args.prompt)
    elif not all(p.strip() for p in prompts):
        raise SelfcorrectError("the prompt is empty")
    image = None
    if args.input is not None:
        from selfcorrect.vision.images import load_image

        if args.prompts is not None or args.rounds == 0:
            raise SelfcorrectError("--input corrects one image: give one PROMPT and --rounds 1 or more")
        image = load_image(args.input)
    started = time.perf_counter()
    loaded, steps, guidance, size = _load(args)
    load_seconds = time.perf_counter() - started

    if args.rounds == 0:
        from selfcorrect.diffusion.generate import generate

        (result,) = generate(loaded.pipeline, prompts, [args.seed], steps=steps, guidance=guidance, size=size)
        image_path = save_image(result.image, args.output / "image.png")
        record = {
            "prompt": args.prompt,
            "seed": args.seed,
            **_pipeline_record(loaded, steps, guidance, size),
            "image": image_path.name,
            "timings": {"load_seconds": round(load_seconds, 3), "generate_seconds": round(result.seconds, 3)},
            "rounds": [],
        }
        write_json(args.output / "trace.json", record)
        print(
            f"wrote {image_path} ({size}x{size}, seed {args.seed}, {steps} steps, attention {loaded.attention}, "
            f"{result.seconds:.2f} s)"
        )
        return 0

    from selfcorrect.diffusion.edits import EditConfig
    from selfcorrect.diffusion.loop import LoopConfig
    from selfcorrect.diffusion.outputs import append_pairs, write_outputs
    from selfcorrect.diffusion.runner import Corrector, run_batch

    edit = EditConfig(steps=steps, guidance=guidance)
    if args.strength is not None:
        edit.strength = args.strength
    corrector = Corrector.build(
        loaded,
        critic=args.critic,
        detector=_detector(args),
        vlm=args.vlm,
        controller=args.controller,
        planner=args.planner,
        config=LoopConfig(rounds=args.rounds, edit=edit, size=size, min_gain=args.min_gain),
        device=args.device,
    )
    if args.prompts is not None:
        counts = run_batch(
            corrector,
            prompts,
            args.output,
            seeds=args.seeds,
            first_seed=args.seed,
            pairs=not args.no_pairs,
            progress=not args.no_progress,
        )
        from accelerate import PartialState

        if PartialState().is_main_process:
            failed = f" (see {args.output}/failures-*.jsonl)" if counts["failed"] else ""
            print(
                f"{counts['done']} corrected, {counts['skipped']} already done, {counts['failed']} failed{failed}, "
                f"{counts['pairs']} preference pairs -> {args.output}"
            )
        # Failed prompts are reported, not fatal; exit 1 only when none could be corrected.
        return 1 if counts["failed"] and not counts["done"] + counts["skipped"] else 0
    trace = corrector.correct(args.prompt, args.seed, image)
    write_outputs(trace, args.output, {**corrector.record(), "load_seconds": round(load_seconds, 3)})
    pairs = 0 if args.no_pairs else append_pairs(trace, args.output / "pairs", args.critic)
    scores = " -> ".join(f"{s:.3f}" if s is not None else "unparsed" for s in trace.scores)
    rolled = sum(1 for r in trace.rounds if r.get("accepted") is False)
    print(
        f"wrote {args.output / 'image.png'} (critic {args.critic} scores {scores}; best: image {trace.best}; "
        f"{rolled} edit(s) rolled back; stopped: {trace.stopped}; {trace.seconds:.1f} s; attention {loaded.attention})"
    )
    print(
        f"rounds: {args.output / 'rounds.png'}; trace: {args.output / 'trace.json'}; pairs written: {pairs}"
    )
    return 0


def _detector(args) -> str:
    """The detector asked for, else the default: CLIP-labelled proposals for the world's plain
    backgrounds (grounding recall of the world VLM is 0.03), OWLv2 for real images."""
    return args.detector or ("clip-proposals" if args.preset == "world" else "owlv2")


def _read_prompts(path: Path) -> list[str]:
    """Non-empty, non-comment lines of a prompts file."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise SelfcorrectError(f"cannot read the prompts file {path}: {e}") from None
    prompts = [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
    if not prompts:
        raise SelfcorrectError(f"{path} holds no prompts")
    return prompts


def cmd_eval_t2i(args) -> int:
    from selfcorrect.diffusion.generate import generate
    from selfcorrect.io import write_report
    from selfcorrect.world.t2i_eval import evaluate_t2i, markdown_table

    if args.seeds < 1:
        raise SelfcorrectError(f"--seeds must be at least 1, got {args.seeds}")
    if args.limit is not None and args.limit < 1:
        raise SelfcorrectError(f"--limit must be at least 1, got {args.limit}")
    loaded, steps, guidance, size = _load(args)

    def generate_fn(prompts, seeds):
        out = generate(
            loaded.pipeline,
            prompts,
            seeds,
            steps=steps,
            guidance=guidance,
            size=size,
            batch_size=args.batch_size,
        )
        return [g.image for g in out]

    result = evaluate_t2i(generate_fn, split=args.split, seeds=args.seeds, limit=args.limit)
    result["model"] = _pipeline_record(loaded, steps, guidance, size)
    result["command"] = args.command_line
    table = markdown_table(result)
    print(table)
    if args.json is not None:
        md = f"# World GenEval: {loaded.preset}\n\n{table}\n"
        print(f"wrote {args.json} and {write_report(args.json, result, md)}")
    return 0


def cmd_eval_loop(args) -> int:
    from selfcorrect.diffusion.edits import EditConfig
    from selfcorrect.diffusion.loop import LoopConfig
    from selfcorrect.diffusion.runner import Corrector
    from selfcorrect.io import save_image, write_report
    from selfcorrect.world.loop_eval import before_after_sheet, evaluate_loop, markdown

    for name in ("seeds", "rounds"):
        if getattr(args, name) < 1:
            raise SelfcorrectError(f"--{name} must be at least 1, got {getattr(args, name)}")
    if args.limit is not None and args.limit < 1:
        raise SelfcorrectError(f"--limit must be at least 1, got {args.limit}")
    loaded, steps, guidance, size = _load(args)
    edit = EditConfig(steps=steps, guidance=guidance)
    if args.strength is not None:
        edit.strength = args.strength
    corrector = Corrector.build(
        loaded,
        critic=args.critic,
        detector=_detector(args),
        vlm=args.vlm,
        config=LoopConfig(rounds=args.rounds, edit=edit, size=size, min_gain=args.min_gain),
        device=args.device,
    )
    result, examples = evaluate_loop(corrector, split=args.split, seeds=args.seeds, limit=args.limit)
    result["loop"] = corrector.record()
    result["command"] = args.command_line
    table = markdown(result)
    print(table)
    if args.json is not None:
        picture = save_image(
            before_after_sheet(examples), args.json.with_name(args.json.stem + "_before_after.png")
        )
        md = (
            f"# Correction loop on the world ({args.split} split)\n\nCommand: `{args.command_line}`\n\n{table}\n"
            f"![before and after]({picture.name})\n"
        )
        print(f"wrote {args.json}, {write_report(args.json, result, md)} and {picture}")
    return 0


def _world_generator(source, device: str):
    """``(generate_fn, record)``: ``generate_fn(prompts, seeds) -> images`` with the world preset's
    defaults (loaded once), for the evals that ask about generated images."""
    from selfcorrect.diffusion.generate import generate
    from selfcorrect.diffusion.presets import load_pipeline

    loaded = load_pipeline("world", source, device=device)
    d = loaded.defaults

    def generate_fn(prompts, seeds):
        out = generate(
            loaded.pipeline,
            prompts,
            seeds,
            steps=d.num_inference_steps,
            guidance=d.guidance_scale,
            size=d.resolution,
            batch_size=32,
        )
        return [g.image for g in out]

    return generate_fn, _pipeline_record(loaded, d.num_inference_steps, d.guidance_scale, d.resolution)


def _optional_clip(path, device: str):
    """``(clip, note)``: the open_clip model at ``path``, or the world CLIP; a missing world CLIP is
    skipped with a note (an explicitly asked-for one is an error)."""
    from selfcorrect.vision.clip import load_world_clip
    from selfcorrect.vision.vlm import ModelNotFoundError

    try:
        return load_world_clip(path, device=device), None
    except ModelNotFoundError as e:
        if path is not None:  # asked for explicitly: an error, not a skip
            raise
        print(f"selfcorrect: skipping CLIP: {e}", file=sys.stderr)
        return None, str(e)


def cmd_eval_vlm(args) -> int:
    from selfcorrect.io import write_report
    from selfcorrect.vision.vlm import VLM
    from selfcorrect.world.conversations import SPLIT_SEEDS
    from selfcorrect.world.vlm_eval import evaluate_vlm, markdown_table

    if args.split not in SPLIT_SEEDS:
        raise SelfcorrectError(f"unknown split {args.split!r}; splits are {', '.join(SPLIT_SEEDS)}")
    for name in ("limit", "batch_size"):
        if getattr(args, name) < 1:
            raise SelfcorrectError(
                f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}"
            )
    for name in ("generated", "throughput"):
        if getattr(args, name) < 0:
            raise SelfcorrectError(f"--{name} must be at least 0, got {getattr(args, name)}")
    # Load everything before the long loops, so a missing model fails in seconds.
    vlm = VLM.from_pretrained(args.model, device=args.device)
    clip, clip_note = _optional_clip(args.clip, args.device)
    generate_fn, t2i = _world_generator(args.t2i_source, args.device) if args.generated else (None, None)

    result = evaluate_vlm(
        vlm,
        split=args.split,
        limit=args.limit,
        generate_fn=generate_fn,
        generated=args.generated,
        clip=clip,
        clip_note=clip_note,
        throughput_images=args.throughput,
        batch_size=args.batch_size,
    )
    result["model"] = {
        "vlm": args.model,
        "device": str(vlm.device),
        "dtype": str(vlm.dtype).removeprefix("torch."),
        "clip": None if clip is None else str(args.clip or "world"),
        "t2i": t2i,
    }
    result["command"] = args.command_line
    table = markdown_table(result)
    print(table)
    if args.json is not None:
        md = (
            f"# World VLM: {args.model} ({args.split} split)\n\n`{args.command_line}`\n\n"
            f"{result['machine']['platform']}, {result['model']['device']}, {result['date']}, "
            f"{result['seconds']} s\n\n{table}"
        )
        print(f"wrote {args.json} and {write_report(args.json, result, md)}")
    return 0


EVAL_CRITICS = (
    "llava_critic",
    "vqa",
    "clip",
    "detection",
    "lookback",
    "tldr",
)  # what `eval critics` can measure


def cmd_eval_critics(args) -> int:
    from selfcorrect.critics import CRITICS
    from selfcorrect.io import write_report
    from selfcorrect.vision.vlm import VLM
    from selfcorrect.world.critic_eval import GENERATE, LOGPROB, SPLITS, load_tldr, markdown_report, run

    # 1. Check everything cheap before loading a model.
    if args.split not in SPLITS:
        raise SelfcorrectError(f"unknown split {args.split!r}; splits are {', '.join(SPLITS)}")
    for name, least in (
        ("limit", 1),
        ("batch_size", 1),
        ("seeds", 0),
        ("chains", 0),
        ("captions", 0),
        ("max_new_tokens", 1),
    ):
        value = getattr(args, name)
        if value is not None and value < least:
            raise SelfcorrectError(f"--{name.replace('_', '-')} must be at least {least}, got {value}")
    wanted = [c.strip() for c in args.critics.split(",") if c.strip()]
    unknown = [c for c in wanted if c not in EVAL_CRITICS]
    if unknown or not wanted:
        raise SelfcorrectError(
            f"--critics: unknown {', '.join(map(repr, unknown)) or 'empty list'}; choose from {', '.join(EVAL_CRITICS)}"
        )

    # 2. Load the models before the long loops, so a missing one fails in seconds.
    vlm = None
    if {"llava_critic", "vqa", "lookback"} & set(wanted):
        vlm = VLM.from_pretrained(args.vlm, device=args.device)
    generating = {} if args.max_new_tokens is None else {"max_new_tokens": args.max_new_tokens}
    critics, notes = {}, {}
    if "llava_critic" in wanted:
        critics[LOGPROB] = CRITICS["llava_critic"](vlm=vlm, mode="logprob", batch_size=args.batch_size)
        critics[GENERATE] = CRITICS["llava_critic"](
            vlm=vlm, mode="generate", batch_size=args.batch_size, **generating
        )
    if "vqa" in wanted:
        # every question asked (the builder judges the world VLM's relations and sizes from boxes)
        critics["vqa"] = CRITICS["vqa"](vlm=vlm, relations="ask", sizes="ask", batch_size=args.batch_size)
        # the same questions, relations and sizes judged from the VLM's boxes instead of asked
        critics["vqa:boxes"] = CRITICS["vqa"](
            vlm=vlm, relations="boxes", sizes="boxes", batch_size=args.batch_size
        )
    if "clip" in wanted:
        clip, note = _optional_clip(args.clip, args.device)
        if clip is None:
            notes["clip"] = note
        else:
            critics["clip"] = CRITICS["clip"](clip=clip, batch_size=max(args.batch_size, 64))
    if "detection" in wanted:
        # the proposals are labelled by the CLIP under test (--clip), like the clip critic
        options = {"clip": args.clip} if args.detector == "clip-proposals" and args.clip else {}
        critics["detection"] = CRITICS["detection"](
            detector=args.detector, device=args.device, detector_options=options
        )
    step_critic = step_logprob = None
    if "lookback" in wanted:
        # VISCO's LookBack as it is; the evaluation adds the rule-checked verdict itself
        step_critic = CRITICS["lookback"](
            vlm=vlm, check_evidence=False, batch_size=args.batch_size, **generating
        )
        # and read instead of written (its verdicts never use the solve step's reference)
        step_logprob = CRITICS["lookback"](
            vlm=vlm,
            mode="logprob",
            solve_first=False,
            check_evidence=False,
            batch_size=args.batch_size,
            **generating,
        )
    tldr, tldr_note = None, "not asked for (--critics)"
    if "tldr" in wanted:
        tldr, tldr_note = load_tldr(args.device)
        if tldr is None:
            print(f"selfcorrect: skipping TLDR: {tldr_note}", file=sys.stderr)
    generate_fn, t2i = _world_generator(args.t2i_source, args.device) if args.seeds else (None, None)

    # 3. Measure.
    result = run(
        args.split,
        args.limit,
        critics=critics,
        compare=(LOGPROB,),
        step_critic=step_critic,
        step_logprob=step_logprob,
        tldr=tldr,
        tldr_note=tldr_note,
        generate_fn=generate_fn,
        seeds=args.seeds,
        chains=args.chains,
        captions=args.captions,
    )
    result["model"] = {
        "vlm": None if vlm is None else args.vlm,
        "device": args.device,
        "dtype": None if vlm is None else str(vlm.dtype).removeprefix("torch."),
        "clip": None if "clip" not in critics else str(args.clip or "world"),
        "t2i": t2i,
        "critics": wanted,
        "skipped": notes,
        "max_new_tokens": args.max_new_tokens,
        "batch_size": args.batch_size,
    }
    result["command"] = args.command_line
    table = markdown_report(result)
    print(table)
    if args.json is not None:
        skipped = "".join(f"\nSkipped {name}: {why}\n" for name, why in notes.items())
        md = (
            f"# Critics vs the oracle ({args.split} split)\n\n`{args.command_line}`\n\n"
            f"{result['machine']['platform']}, torch {result['machine']['torch']} "
            f"(threads: {result['machine']['torch_threads']}), {args.device}, {result['date']}, "
            f"{result['seconds']} s\n{skipped}\n{table}"
        )
        print(f"wrote {args.json} and {write_report(args.json, result, md)}")
    return 0


# ---------------------------------------------------------------------------------------------
# selfcorrect critique

CRITIQUE_EPILOG = """\
exit codes:
  0  the verdict passes (or has a score but the critic has no threshold)
  1  the verdict fails
  2  bad input: missing or corrupt image, empty text, unknown critic, missing model weights
  3  the critic's output could not be read (unparsed)

examples:
  selfcorrect critique image.png --prompt "two red circles and a blue square"
  selfcorrect critique image.png --prompt "a red circle" --critic llava_critic --json
  selfcorrect critique image.png --question "How many red circles are there?" \\
      --answer $'Step 1: There is a red circle at [10, 10, 30, 30].\\nAnswer: 1'
"""


def make_critique_parser(commands) -> None:
    p = commands.add_parser(
        "critique",
        help="judge an image against a prompt, or a (step-by-step) answer about an image, with a critic",
        description="Judge an image against its text prompt (--prompt), or an answer to a question "
        "about the image (--question, --answer; the answer may be 'Step i: ...' lines and an "
        "'Answer: ...' line) with one of the critics.",
        epilog=CRITIQUE_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("image", type=Path, help="image file")
    p.add_argument("--prompt", default=None, help="the text prompt the image should show")
    p.add_argument("--question", default=None, help="a question about the image (needs --answer)")
    p.add_argument(
        "--answer",
        default=None,
        help="the answer to judge; 'Step i: ...' lines make a reasoning chain, any other text is a "
        "one-step chain",
    )
    p.add_argument(
        "--critic",
        default=None,
        help="critic name (default: vqa for --prompt, lookback for --question); see "
        "selfcorrect.critics.CRITICS",
    )
    p.add_argument("--vlm", default=None, help="world (default), a model folder or a Hugging Face id")
    p.add_argument("--device", default="cpu", help="cpu (default), cuda, cuda:1, ...")
    p.add_argument(
        "--max-new-tokens",
        type=int,
        default=None,
        help="longest text a generating critic writes (default: the critic's)",
    )
    p.add_argument("--json", action="store_true", help="print the verdict as JSON")
    p.set_defaults(func=cmd_critique)


def cmd_critique(args) -> int:
    import inspect

    from selfcorrect.critics import CRITICS
    from selfcorrect.vision.images import load_image

    # 1. Check everything cheap before loading a model.
    if args.prompt is not None and args.question is not None:
        raise SelfcorrectError("give either --prompt (judge an image) or --question with --answer, not both")
    if args.answer is not None and args.question is None:
        raise SelfcorrectError("--answer needs --question")
    if args.question is not None and args.answer is None:
        raise SelfcorrectError("--question needs --answer (the answer to judge)")
    if args.prompt is None and args.question is None:
        raise SelfcorrectError("give --prompt (judge an image) or --question with --answer")
    for flag in ("prompt", "question", "answer"):
        value = getattr(args, flag)
        if value is not None and not value.strip():
            raise SelfcorrectError(f"--{flag} is empty")
    if args.max_new_tokens is not None and args.max_new_tokens < 1:
        raise SelfcorrectError(f"--max-new-tokens must be at least 1, got {args.max_new_tokens}")
    name = args.critic or ("vqa" if args.prompt is not None else "lookback")
    if name not in CRITICS:
        raise SelfcorrectError(f"unknown critic {name!r}; critics are {', '.join(CRITICS)}")
    chain = None
    if args.question is not None:
        from selfcorrect.critics.lookback import as_chain

        try:
            chain = as_chain(args.answer)
        except ValueError as e:
            raise SelfcorrectError(f"--answer: {e}") from None
    image = load_image(args.image)

    # 2. Build the critic (loads its model; a missing one is a ModelNotFoundError).
    build = CRITICS[name]
    params = inspect.signature(build).parameters
    options = {"device": args.device}
    if "vlm" in params:
        options["vlm"] = args.vlm
    elif args.vlm is not None:
        raise SelfcorrectError(f"critic {name!r} does not use a VLM; leave out --vlm")
    if args.max_new_tokens is not None:
        options["max_new_tokens"] = args.max_new_tokens
    try:
        critic = build(**options)
    except TypeError:
        if args.max_new_tokens is None:
            raise
        raise SelfcorrectError(
            f"critic {name!r} does not generate text; leave out --max-new-tokens"
        ) from None

    # 3. Judge.
    kinds = critic.kinds
    record = {"image": str(args.image), "critic": name}
    trace = None
    if args.prompt is not None:
        if "image" not in kinds:
            raise SelfcorrectError(
                f"critic {name!r} does not judge images against prompts (it judges: "
                f"{', '.join(sorted(kinds))}); use --question and --answer, or another --critic"
            )
        verdict = critic.critique(image, args.prompt)
        record["prompt"] = args.prompt
    else:
        steps, answer = chain
        record.update(question=args.question, steps=steps, answer=answer)
        if "steps" in kinds:
            if callable(getattr(critic, "lookback", None)):
                trace = critic.lookback(image, args.question, steps, answer)
                verdict = trace.verdict
            else:
                verdict = critic.critique_steps(image, args.question, steps, answer)
        elif "answer" in kinds:
            verdict = critic.critique_answer(image, args.question, args.answer)
        else:
            raise SelfcorrectError(
                f"critic {name!r} does not judge answers to questions; use --prompt, or --critic lookback"
            )
    passed, unparsed = _verdict_outcome(verdict)
    code = 3 if unparsed else 0 if passed is not False else 1
    if args.json:
        record["verdict"] = verdict.to_dict()
        if trace is not None:
            record["lookback"] = {k: v for k, v in trace.to_dict().items() if k != "verdict"}
        record["outcome"] = "unparsed" if unparsed else {True: "pass", False: "fail", None: "scored"}[passed]
        print(json.dumps(record, indent=2))
    else:
        why = None if trace is None else trace.answer_contradiction
        print(_describe_verdict(record, verdict, passed, unparsed, answer_why=why))
    return code


def _verdict_outcome(verdict) -> tuple[bool | None, bool]:
    """``(passed, unparsed)`` for an image or step verdict."""
    if verdict.unparsed:
        return None, True
    if hasattr(verdict, "answer_correct"):  # a step verdict: every step and the answer correct
        return bool(verdict.answer_correct) and verdict.first_error is None, False
    return verdict.passed, False


def _describe_verdict(record: dict, verdict, passed, unparsed: bool, answer_why: str | None = None) -> str:
    head = "UNPARSED" if unparsed else "SCORED" if passed is None else "PASS" if passed else "FAIL"
    about = record.get("prompt", record.get("question"))
    lines = [f"{head}  {record['image']}: {about!r} (critic {record['critic']})"]
    if unparsed:
        raw = " ".join(str(verdict.raw).split())
        lines.append("  no verdict could be read from the critic's output")
        lines.append(f"  raw: {raw[:300]!r}" + (" ..." if len(raw) > 300 else ""))
        return "\n".join(lines)
    if hasattr(verdict, "answer_correct"):
        for i, (text, ok, why) in enumerate(zip(record["steps"], verdict.steps, verdict.explanations)):
            mark = "ok" if ok else "x " if ok is False else "? "
            lines.append(f"  [{mark}] step {i + 1}: {text}")
            if ok is False and why:
                lines.append(f"         why: {why}")
        lines.append(f"  [{'ok' if verdict.answer_correct else 'x '}] answer: {record['answer']}")
        if verdict.answer_correct is False and answer_why:
            lines.append(f"         why: {answer_why}")
        return "\n".join(lines)
    score = "none" if verdict.score is None else f"{verdict.score:.2f}"
    lines[0] += f"  score {score}"
    for f in verdict.findings:
        where = "" if f.box is None else "  at ({:.2f}, {:.2f}, {:.2f}, {:.2f})".format(*f.box)
        lines.append(f"  [{'ok' if f.passed else 'x '}] {f.requirement}: {f.score:.2f}{where}")
        if not f.passed and f.explanation:
            lines.append(f"         {f.explanation}")
    if verdict.explanation:
        lines.append(f"  {verdict.explanation}")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# selfcorrect world ...


def make_world_parser(commands) -> None:
    world = commands.add_parser(
        "world", help="the embedded world: render prompts, check images with the oracle, prompt suites"
    )
    sub = world.add_subparsers(title="world commands", metavar="COMMAND")

    p = sub.add_parser("render", help="render a scene that satisfies a prompt")
    p.add_argument("prompt", help='a prompt of the world grammar, e.g. "two red circles and a blue square"')
    p.add_argument("-o", "--output", required=True, type=Path, help="image file to write (.png, .jpg, ...)")
    p.add_argument("--seed", type=int, default=0, help="scene seed (default: 0)")
    p.add_argument("--size", type=int, default=64, help="canvas side in pixels, 16..1024 (default: 64)")
    p.add_argument("--texture", type=float, default=0.0, help="background texture 0..1 (default: 0)")
    p.add_argument("--json", action="store_true", help="print the scene as JSON")
    p.set_defaults(func=cmd_world_render)

    p = sub.add_parser("check", help="judge an image against a prompt with the oracle")
    p.add_argument("image", type=Path, help="image file")
    p.add_argument("--prompt", required=True, help="the prompt the image should show")
    p.add_argument("--json", action="store_true", help="print the verdict as JSON")
    p.set_defaults(func=cmd_world_check)

    p = sub.add_parser("suite", help="list the prompts of a prompt suite")
    p.add_argument("--split", default="test", help="train, val, test or heldout (default: test)")
    p.add_argument("--category", default=None, help="one category (default: all)")
    p.add_argument("--json", action="store_true", help="print JSON records instead of plain lines")
    p.add_argument("--table", action="store_true", help="print the split x category size table")
    p.set_defaults(func=cmd_world_suite)

    p = sub.add_parser("selftest", help="measure the oracle on degraded renders")
    p.add_argument("--n", type=int, default=2000, help="number of scenes (default: 2000)")
    p.add_argument("--seed", type=int, default=0, help="seed (default: 0)")
    p.add_argument("--size", type=int, default=64, help="canvas side in pixels (default: 64)")
    p.add_argument("--json", type=Path, default=None, help="write results here (+ a .md table beside it)")
    p.set_defaults(func=cmd_world_selftest)


def cmd_world_render(args) -> int:
    from selfcorrect.io import save_image
    from selfcorrect.world.grammar import parse_prompt
    from selfcorrect.world.render import render
    from selfcorrect.world.sampling import sample_scene

    if not 0.0 <= args.texture <= 1.0:
        raise SelfcorrectError(f"--texture must be between 0 and 1, got {args.texture}")
    if not 16 <= args.size <= 1024:
        raise SelfcorrectError(f"--size must be between 16 and 1024 pixels, got {args.size}")
    requirements = parse_prompt(args.prompt)
    scene = sample_scene(requirements, args.seed, texture=args.texture)
    save_image(render(scene, args.size), args.output)
    if args.json:
        print(
            json.dumps({"prompt": args.prompt, "image": str(args.output), "scene": scene.to_dict()}, indent=2)
        )
    else:
        objects = ", ".join(o.phrase for o in scene.objects)
        print(f"wrote {args.output} ({args.size}x{args.size}, seed {args.seed}): {objects}")
    return 0


def cmd_world_check(args) -> int:
    from selfcorrect.world.grammar import parse_prompt
    from selfcorrect.world.oracle import check, load_image

    requirements = parse_prompt(args.prompt)
    verdict = check(load_image(args.image), requirements)
    if args.json:
        print(json.dumps({"image": str(args.image), "prompt": args.prompt, **verdict.to_dict()}, indent=2))
    else:
        print(f"{'PASS' if verdict.passed else 'FAIL'}  {args.image}: {args.prompt!r}")
        for r in verdict.results:
            print(f"  [{'ok' if r.passed else 'x '}] {r.description}: {r.reason}")
        print(f"  detected: {_describe_detected(verdict.detected)}")
    return 0 if verdict.passed else 1


def _describe_detected(detected) -> str:
    if not detected:
        return "nothing"
    parts = []
    for d in detected:
        what = " ".join(w for w in (d.size, d.colour or "mixed-colour", d.shape or "unrecognised blob") if w)
        x0, y0, x1, y1 = d.box
        parts.append(f"{what} at ({x0:.2f}, {y0:.2f}, {x1:.2f}, {y1:.2f})")
    return "; ".join(parts)


def cmd_world_suite(args) -> int:
    from selfcorrect.world.suites import load_suite, suite_table

    if args.table:
        print(suite_table())
        return 0
    prompts = load_suite(args.split, args.category)
    for p in prompts:
        if args.json:
            print(json.dumps({"prompt": p.prompt, "category": p.category, "split": p.split}))
        else:
            print(p.prompt)
    return 0


def cmd_world_selftest(args) -> int:
    from selfcorrect.world.selftest import run_selftest, write_results

    if args.n < 1:
        raise SelfcorrectError(f"--n must be at least 1, got {args.n}")
    result = run_selftest(n_scenes=args.n, seed=args.seed, size=args.size, progress=True)
    if args.json is not None:
        write_results(result, args.json, args.json.with_suffix(".md"))
        print(f"wrote {args.json} and {args.json.with_suffix('.md')}")
    summary = {k: result[k] for k in ("object_f1", "prompt_accuracy") if k in result}
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
