"""`selfcorrect critique`, run in-process through `main(argv)` on a tiny random LLaVA.

The tiny model's verdicts are noise: these tests check the plumbing (exit codes, output formats,
error messages), not the judgements.
"""

import json

import pytest
from PIL import Image

from selfcorrect.cli import main

# short: the tiny model's context is 512 byte-level tokens
CHAIN = "Step 1: A red circle.\nStep 2: So 1.\nAnswer: 1"


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from selfcorrect.vision.testing import build_tiny_vlm

    return build_tiny_vlm("llava", tmp_path_factory.mktemp("llava"))


@pytest.fixture
def image(tmp_path):
    path = tmp_path / "red.png"
    Image.new("RGB", (32, 32), (220, 30, 30)).save(path)
    return path


def test_help_documents_the_exit_codes(capsys):
    with pytest.raises(SystemExit) as e:
        main(["critique", "--help"])
    out = capsys.readouterr().out
    assert e.value.code == 0 and "usage:" in out and "3  the critic's output could not be read" in out


def test_image_verdict_readable_and_json(tiny, image, capsys):
    code, out, _ = run(
        capsys, "critique", image, "--prompt", "a red circle left of a blue square", "--vlm", tiny
    )
    assert code in (0, 1) and out.startswith("PASS" if code == 0 else "FAIL")
    assert "score" in out and "a red circle" in out
    code, out, _ = run(capsys, "critique", image, "--prompt", "a red circle", "--vlm", tiny, "--json")
    record = json.loads(out)
    assert record["critic"] == "vqa" and record["prompt"] == "a red circle"
    assert 0.0 <= record["verdict"]["score"] <= 1.0 and len(record["verdict"]["findings"]) == 1
    assert record["outcome"] == ("pass" if code == 0 else "fail")


def test_reasoning_chain_with_lookback_is_unparsed_on_a_random_model(tiny, image, capsys):
    argv = ["critique", image, "--question", "How many?", "--answer", CHAIN]
    code, out, _ = run(capsys, *argv, "--vlm", tiny, "--max-new-tokens", "4", "--json")
    record = json.loads(out)
    assert code == 3 and record["outcome"] == "unparsed" and record["critic"] == "lookback"
    assert record["steps"] == ["A red circle.", "So 1."]
    assert record["answer"] == "1" and record["verdict"]["unparsed"]
    assert len(record["lookback"]["evidence"]) == 2
    code, out, _ = run(capsys, "critique", image, "--question", "What colour?", "--answer", "red",
                       "--vlm", tiny, "--max-new-tokens", "4")  # fmt: skip
    assert code == 3 and out.startswith("UNPARSED") and "raw:" in out


def test_answer_critic_judges_a_plain_answer(tiny, image, capsys):
    code, out, _ = run(
        capsys, "critique", image, "--question", "What colour?", "--answer", "red",
        "--critic", "llava_critic", "--vlm", tiny, "--json",
    )  # fmt: skip
    record = json.loads(out)
    assert code in (0, 1) and 0.0 <= record["verdict"]["score"] <= 1.0


def _error(capsys, *argv):
    code, out, err = run(capsys, *argv)
    # transformers may draw a loading progress bar on stderr first; the error is one line, the last
    lines = [line for line in err.replace("\r", "\n").splitlines() if line.strip()]
    assert code == 2 and out == "" and lines[-1].startswith("selfcorrect: error: ")
    assert sum("error" in line for line in lines) == 1, err
    return lines[-1]


def test_bad_input_is_one_clear_error(tmp_path, image, tiny, capsys):
    assert "no such file" in _error(capsys, "critique", tmp_path / "missing.png", "--prompt", "a red circle")
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(b"not an image at all")
    assert "corrupt.png" in _error(capsys, "critique", corrupt, "--prompt", "a red circle")
    assert "--prompt is empty" in _error(capsys, "critique", image, "--prompt", "  ")
    err = _error(capsys, "critique", image, "--prompt", "a red circle", "--critic", "gpt5")
    assert "unknown critic 'gpt5'" in err and "vqa" in err and "lookback" in err
    assert "--question needs --answer" in _error(capsys, "critique", image, "--question", "What colour?")
    assert "not both" in _error(
        capsys, "critique", image, "--prompt", "x", "--question", "y", "--answer", "z"
    )
    assert "--answer needs --question" in _error(capsys, "critique", image, "--answer", "red")
    assert "give --prompt" in _error(capsys, "critique", image)
    assert "no model folder" in _error(
        capsys, "critique", image, "--prompt", "a red circle", "--vlm", tmp_path / "nowhere"
    )
    err = _error(capsys, "critique", image, "--prompt", "a red circle", "--critic", "lookback", "--vlm", tiny)
    assert "does not judge images" in err and "--question" in err
    err = _error(
        capsys, "critique", image, "--prompt", "a red circle", "--vlm", tiny, "--max-new-tokens", "5"
    )
    assert "does not generate text" in err
    assert "does not use a VLM" in _error(
        capsys, "critique", image, "--prompt", "a red circle", "--critic", "clip", "--vlm", tiny
    )


def test_missing_world_weights_are_a_clear_error(image, tmp_path, monkeypatch, capsys):
    from selfcorrect.vision import vlm

    monkeypatch.setattr(vlm, "WORLD_VLM_DIR", tmp_path / "world-vlm")  # as before training writes it
    err = _error(capsys, "critique", image, "--prompt", "a red circle")  # the default: --vlm world
    assert "world VLM is not built yet" in err and "world-vlm" in err
