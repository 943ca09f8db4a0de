"""The `selfcorrect` command line, run in-process through `main(argv)`."""

import json
import os
import shutil
import subprocess

import pytest
from PIL import Image

from selfcorrect.cli import main

PROMPT = "two red circles and a blue square"


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_every_command_has_help(capsys):
    for argv in (
        [],
        ["world"],
        ["world", "render"],
        ["world", "check"],
        ["world", "suite"],
        ["world", "selftest"],
        ["eval", "t2i"],
        ["eval", "vlm"],
        ["critique"],
    ):
        with pytest.raises(SystemExit) as e:
            main([*argv, "--help"])
        assert e.value.code == 0
        assert "usage:" in capsys.readouterr().out


def test_render_then_check_passes(tmp_path, capsys):
    image = tmp_path / "sub" / "scene.png"
    code, out, _ = run(capsys, "world", "render", PROMPT, "-o", str(image), "--seed", "3")
    assert code == 0 and image.exists() and "wrote" in out
    assert Image.open(image).size == (64, 64)
    code, out, _ = run(capsys, "world", "check", str(image), "--prompt", PROMPT)
    assert code == 0 and out.startswith("PASS")
    # The same image does not show three red circles: exit 1 and the reason.
    code, out, _ = run(capsys, "world", "check", str(image), "--prompt", "three red circles")
    assert code == 1 and out.startswith("FAIL") and "found 2 red circles" in out


def test_render_json_and_size(tmp_path, capsys):
    image = tmp_path / "big.png"
    code, out, _ = run(
        capsys, "world", "render", "a large green cross", "-o", str(image), "--size", "128", "--json"
    )
    record = json.loads(out)
    assert code == 0 and Image.open(image).size == (128, 128)
    assert record["scene"]["objects"][0]["shape"] == "cross"


def test_check_json(tmp_path, capsys):
    image = tmp_path / "x.png"
    run(capsys, "world", "render", "a red circle left of a blue square", "-o", str(image))
    code, out, _ = run(
        capsys, "world", "check", str(image), "--prompt", "a red circle left of a blue square", "--json"
    )
    verdict = json.loads(out)
    assert code == 0 and verdict["passed"] is True
    assert [r["passed"] for r in verdict["results"]] == [True, True, True]
    assert len(verdict["detected"]) == 2


@pytest.mark.parametrize(
    "prompt, message",
    [
        ("a red hexagon", "hexagon"),
        ("", "empty"),
        ("five circles", "four"),
        ("four circles and four squares and a cross", "8"),
        ("a red circle left of itself", "itself"),
        ("two circles and no circles", ""),
    ],
)
def test_bad_prompts_exit_2_with_one_message(tmp_path, capsys, prompt, message):
    out_path = tmp_path / "never.png"
    code, out, err = run(capsys, "world", "render", prompt, "-o", str(out_path))
    assert code == 2
    assert err.startswith("selfcorrect: error: ") and err.count("\n") == 1
    assert message.lower() in err.lower()
    assert "Traceback" not in err and not out_path.exists()


def test_bad_images_exit_2(tmp_path, capsys):
    text = tmp_path / "not_an_image.png"
    text.write_text("hello")
    truncated = tmp_path / "truncated.png"
    Image.new("RGB", (64, 64), "red").save(truncated)
    truncated.write_bytes(truncated.read_bytes()[:40])
    for path in (tmp_path / "missing.png", text, truncated, tmp_path):
        code, _, err = run(capsys, "world", "check", str(path), "--prompt", "a circle")
        assert code == 2 and err.startswith("selfcorrect: error: ") and "Traceback" not in err, path


def test_unwritable_output_keeps_old_file(tmp_path, capsys):
    target = tmp_path / "scene.png"
    target.write_bytes(b"old")
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        if os.access(locked, os.W_OK):  # root ignores permissions; a file-as-folder always fails
            blocker = tmp_path / "file"
            blocker.write_text("x")
            bad = blocker / "scene.png"
        else:
            bad = locked / "scene.png"
        code, _, err = run(capsys, "world", "render", "a circle", "-o", str(bad))
        assert code == 2 and "cannot write" in err
        code, _, err = run(capsys, "world", "render", "a circle", "-o", str(tmp_path / "scene.gif"))
        assert code == 2 and ".gif" in err
        code, _, err = run(capsys, "world", "render", "a circle", "-o", str(tmp_path))
        assert code == 2 and "directory" in err
    finally:
        locked.chmod(0o700)
    assert target.read_bytes() == b"old"
    assert not [p for p in tmp_path.rglob("*.tmp")]


def test_bad_numbers_exit_2(tmp_path, capsys):
    assert run(capsys, "world", "render", "a circle", "-o", str(tmp_path / "a.png"), "--size", "4")[0] == 2
    assert run(capsys, "world", "render", "a circle", "-o", str(tmp_path / "a.png"), "--texture", "3")[0] == 2
    assert run(capsys, "world", "selftest", "--n", "0")[0] == 2


def test_suite_lists_prompts(capsys):
    code, out, _ = run(capsys, "world", "suite", "--split", "test", "--category", "counting")
    lines = out.strip().splitlines()
    assert code == 0 and len(lines) >= 100 and len(set(lines)) == len(lines)
    code, out, _ = run(capsys, "world", "suite", "--split", "test", "--json")
    records = [json.loads(line) for line in out.strip().splitlines()]
    assert {r["category"] for r in records} >= {"single_object", "negation", "position"}
    assert run(capsys, "world", "suite", "--split", "nope")[0] == 2
    code, out, _ = run(capsys, "world", "suite", "--table")
    assert code == 0 and "heldout" in out


def test_selftest_writes_results(tmp_path, capsys):
    path = tmp_path / "r" / "selftest.json"
    code, out, _ = run(capsys, "world", "selftest", "--n", "40", "--json", str(path))
    assert code == 0
    result = json.loads(path.read_text())
    assert path.with_suffix(".md").exists()
    assert result["n_scenes"] == 40


def test_console_script_is_installed():
    exe = shutil.which("selfcorrect")
    assert exe is not None, "pip install -e . puts a `selfcorrect` script on PATH"
    out = subprocess.run([exe, "world", "render", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "--seed" in out.stdout
