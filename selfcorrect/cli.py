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
    p = commands.add_parser("generate", help="generate an image for a prompt (and, later, correct it)")
    p.add_argument("prompt", help='e.g. "two red circles and a blue square"')
    p.add_argument(
        "-o", "--output", required=True, type=Path, help="output directory (image.png + record.json)"
    )
    p.add_argument(
        "--seed", type=int, default=0, help="seed (default: 0); the same seed gives the same image on CPU"
    )
    p.add_argument("--rounds", type=int, default=0, help="correction rounds (default: 0: generate only)")
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

    from selfcorrect.diffusion.generate import generate
    from selfcorrect.io import save_image, write_json

    if args.rounds != 0:
        raise SelfcorrectError("correction rounds are not available yet: use --rounds 0")
    if args.preset == "world":  # the world model only knows the world grammar: refuse early and clearly
        from selfcorrect.world.grammar import parse_prompt

        parse_prompt(args.prompt)
    elif not args.prompt.strip():
        raise SelfcorrectError("the prompt is empty")
    if args.output.exists() and not args.output.is_dir():
        raise SelfcorrectError(f"cannot write into {args.output}: it is a file, not a directory")
    started = time.perf_counter()
    loaded, steps, guidance, size = _load(args)
    load_seconds = time.perf_counter() - started
    (result,) = generate(
        loaded.pipeline, [args.prompt], [args.seed], steps=steps, guidance=guidance, size=size
    )
    image_path = save_image(result.image, args.output / "image.png")
    record = {
        "prompt": args.prompt,
        "seed": args.seed,
        **_pipeline_record(loaded, steps, guidance, size),
        "image": image_path.name,
        "timings": {"load_seconds": round(load_seconds, 3), "generate_seconds": round(result.seconds, 3)},
        "rounds": [],
    }
    write_json(args.output / "record.json", record)
    print(
        f"wrote {image_path} ({size}x{size}, seed {args.seed}, {steps} steps, attention {loaded.attention}, {result.seconds:.2f} s)"
    )
    return 0


def cmd_eval_t2i(args) -> int:
    from selfcorrect.diffusion.generate import generate
    from selfcorrect.io import write_json, write_text
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
        write_json(args.json, result)
        write_text(args.json.with_suffix(".md"), f"# World GenEval: {loaded.preset}\n\n{table}\n")
        print(f"wrote {args.json} and {args.json.with_suffix('.md')}")
    return 0


def cmd_eval_vlm(args) -> int:
    from selfcorrect.io import write_json, write_text
    from selfcorrect.vision.clip import load_world_clip
    from selfcorrect.vision.vlm import VLM, ModelNotFoundError
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
    clip, clip_note = None, None
    try:
        clip = load_world_clip(args.clip, device=args.device)
    except ModelNotFoundError as e:
        if args.clip is not None:  # asked for explicitly: an error, not a skip
            raise
        clip_note = str(e)
        print(f"selfcorrect: skipping CLIP: {clip_note}", file=sys.stderr)
    generate_fn, t2i = None, None
    if args.generated:
        from selfcorrect.diffusion.generate import generate
        from selfcorrect.diffusion.presets import load_pipeline

        loaded = load_pipeline("world", args.t2i_source, device=args.device)
        d = loaded.defaults
        t2i = _pipeline_record(loaded, d.num_inference_steps, d.guidance_scale, d.resolution)

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
        write_json(args.json, result)
        write_text(args.json.with_suffix(".md"), md)
        print(f"wrote {args.json} and {args.json.with_suffix('.md')}")
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
        print(_describe_verdict(record, verdict, passed, unparsed))
    return code


def _verdict_outcome(verdict) -> tuple[bool | None, bool]:
    """``(passed, unparsed)`` for an image or step verdict."""
    if verdict.unparsed:
        return None, True
    if hasattr(verdict, "answer_correct"):  # a step verdict: every step and the answer correct
        return bool(verdict.answer_correct) and verdict.first_error is None, False
    return verdict.passed, False


def _describe_verdict(record: dict, verdict, passed, unparsed: bool) -> str:
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
