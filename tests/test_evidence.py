"""LookBack's evidence read by rule (selfcorrect.critics.evidence) and LookBack with it.

Each rule of the module's table is asserted both ways (a contradiction is found; an agreeing or
unreadable answer is not one), then check_verdict on a verdict, then the critic end to end with
a scripted VLM whose critique, like the world VLM's, ignores the evidence.
"""

import json
import math

import pytest
import torch
from PIL import Image

from selfcorrect.critics import CRITICS
from selfcorrect.critics import prompts as P
from selfcorrect.critics.evidence import check_verdict, content_words, contradiction
from selfcorrect.critics.lookback import LookBackCritic
from selfcorrect.critics.verdicts import StepVerdict

EXISTS = "Is there an orange square?"
FIND = "Find every orange square. Answer with bounding boxes."
COUNT = "How many squares are there?"
COLOUR = "What colour is the small triangle?"
WHERE = "Where is the red circle relative to the blue square?"


@pytest.mark.parametrize(
    "step, question, answer",
    [
        ("So there is no orange square.", EXISTS, "Yes"),  # yes, the step denies
        ("So there is an orange square.", EXISTS, "No"),  # no, the step affirms
        ("There is an orange square at [10, 10, 30, 30].", FIND, "None"),  # nothing found
        ("So there are 0 squares.", COUNT, "1"),  # another number
        ("So there are two squares.", COUNT, "3"),  # number words count as numbers
        ("It is orange.", COLOUR, "yellow"),  # no word in common
        ("The red circle is left of the blue square.", WHERE, "right of"),
    ],
)
def test_an_answer_that_says_the_opposite_contradicts_the_step(step, question, answer):
    why = contradiction(step, question, answer)
    assert why == f"asked {question!r}, the image says {answer!r}"


@pytest.mark.parametrize(
    "step, question, answer",
    [
        ("So there is no orange square.", EXISTS, "No."),
        ("So there is an orange square.", EXISTS, "Yes, there is."),
        ("So there isn't an orange square.", EXISTS, "None"),  # n't denies
        ("So there are 2 squares.", COUNT, "2"),
        ("So there are two squares.", COUNT, "2"),
        ("So there is 1 square.", COUNT, "one"),
        ("There is a square at [10, 10, 30, 30].", COUNT, "10"),  # box numbers are not counts
        ("It is yellow.", COLOUR, "Yellow."),
        ("The red circle is left of and above the blue square.", WHERE, "above"),
        ("The crosses are red.", "What shape are the red objects?", "cross"),  # plurals
        ("There is an orange square at [10, 10, 30, 30].", FIND, "[60, 60, 80, 80]"),  # boxes unread
        ("It is orange.", COLOUR, "N/A"),
        ("It is orange.", COLOUR, ""),
        ("It is orange.", COLOUR, "it is a colour somewhere between a yellow and a red"),  # long
    ],
)
def test_agreeing_or_unreadable_answers_are_no_contradiction(step, question, answer):
    assert contradiction(step, question, answer) is None


def test_content_words_drop_stop_words_and_boxes_and_singularise():
    assert content_words("There are three crosses at [1, 2, 3, 4] and two circles.") == {
        "3",
        "cross",
        "2",
        "circle",
    }


def test_check_verdict_flags_contradicted_steps_and_keeps_the_rest():
    steps = ["There is a square at [10, 10, 30, 30].", "So there is no orange square.", "It is red."]
    questions = [[FIND], [EXISTS], ["What colour is it?", "Is it red?"]]
    answers = [["[10, 10, 30, 30]"], ["Yes"], ["red", "No"]]
    verdict = StepVerdict(
        [True, True, False],
        ["", "", "it is blue"],
        True,
        step_probabilities=[0.9, 0.8, 0.1],
        critic="lookback",
    )
    check = check_verdict(verdict, steps, questions, answers)
    checked, reasons = check.verdict, check.steps
    assert check.answer is None
    assert reasons == [
        None,
        f"asked {EXISTS!r}, the image says 'Yes'",
        "asked 'Is it red?', the image says 'No'",
    ]
    assert checked.steps == [True, False, False] and checked.first_error == 1
    # the reason explains a step only the rule flagged; the critique's own explanation is kept
    assert checked.explanations == ["", reasons[1], "it is blue"]
    assert checked.step_probabilities == [0.9, 0.0, 0.0]
    assert checked.answer_correct is True and checked.critic == "lookback:checked"
    assert verdict.steps == [True, True, False]  # the given verdict is not changed
    with pytest.raises(ValueError):
        check_verdict(verdict, steps[:2], questions, answers)


def test_the_answer_to_the_chains_own_question_checks_the_final_answer():
    steps = ["There is a square at [10, 10, 30, 30].", "So there are 2 squares."]
    questions, answers = [[FIND], [COUNT]], [["[10, 10, 30, 30]"], ["1"]]
    verdict = StepVerdict([True, True], ["", ""], True)
    check = check_verdict(
        verdict, steps, questions, answers, question="how many  squares are there", answer="2"
    )
    assert check.answer == f"asked {COUNT!r}, the image says '1'" and check.verdict.answer_correct is False
    assert check.steps == [None, check.answer] and check.verdict.steps == [True, False]
    # agreeing, or not the chain's own question, or no answer given: the verdict's answer stands
    agree = check_verdict(
        verdict, steps, questions, [["[10, 10, 30, 30]"], ["2"]], question=COUNT, answer="2"
    )
    assert (
        agree.answer is None and agree.verdict.answer_correct is True and agree.verdict.steps == [True, True]
    )
    other = check_verdict(verdict, steps, questions, answers, question="Is there a square?", answer="2")
    assert other.answer is None and other.verdict.answer_correct is True
    assert check_verdict(verdict, steps, questions, answers).verdict.answer_correct is True


# ------------------------------------------------------------------------------ in LookBack

IMAGE = Image.new("RGB", (32, 32), (220, 30, 30))
QUESTION = "Is there an orange square?"
STEPS = ["There is a red square at [10, 10, 30, 30].", "So there is no orange square."]
ALL_CORRECT = json.dumps(
    {
        "step_1": {"correctness": True, "explanation": ""},
        "step_2": {"correctness": True, "explanation": ""},
        "answer_correctness": True,
    }
)


class EvidenceBlindVLM:
    """Asks one question per step, answers them as the image would, and judges every step correct
    whatever the evidence (the world VLM's failure); ``score`` gives P(true) 0.8 everywhere."""

    def __init__(self):
        self.prompts = []

    def chat(self, images, messages, *, max_new_tokens=256, batch_size=8, **options):
        self.prompts += messages
        replies = []
        for m in messages:
            if m.startswith("Question:"):  # visual queries: the last step's check
                replies.append(FIND if m.rstrip().count("Step ") == 1 else EXISTS)
            elif m.endswith(P.VERIFY.format(question="")[1:]):
                replies.append("[10, 10, 30, 30]" if m.startswith("Find") else "Yes")
            elif m.startswith("Evaluate"):
                replies.append(ALL_CORRECT)
            else:
                replies.append("Step 1: There is an orange square.\nAnswer: Yes")
        return replies

    def score(self, images, prompts, continuations, *, batch_size=16):
        return torch.tensor([[math.log(0.8), math.log(0.2)]] * len(prompts))


@pytest.mark.parametrize("mode", ["generate", "logprob"])
def test_lookback_with_check_evidence_flags_what_its_critique_ignored(mode):
    plain = LookBackCritic(EvidenceBlindVLM(), mode=mode).lookback(IMAGE, QUESTION, STEPS, "No")
    assert plain.verdict.steps == [True, True] and plain.contradictions == [None, None]
    assert plain.answer_contradiction is None and plain.verdict.answer_correct is True
    vlm = EvidenceBlindVLM()
    trace = LookBackCritic(vlm, mode=mode, check_evidence=True).lookback(IMAGE, QUESTION, STEPS, "No")
    assert trace.questions == [[FIND], [EXISTS]] and trace.answers == [["[10, 10, 30, 30]"], ["Yes"]]
    why = f"asked {EXISTS!r}, the image says 'Yes'"
    assert trace.contradictions == [None, why]
    # the chain's own question was asked, and the image's "Yes" contradicts its answer "No"
    assert trace.answer_contradiction == why and trace.verdict.answer_correct is False
    assert trace.verdict.steps == [True, False] and trace.verdict.explanations[1] == why
    assert trace.verdict.critic == "lookback:checked"
    if mode == "logprob":
        assert trace.verdict.step_probabilities == pytest.approx([0.8, 0.0])
    assert json.loads(json.dumps(trace.to_dict()))["contradictions"] == [None, why]
    # the check adds no model call: the same prompts as without it
    assert vlm.prompts == _prompts_without_check(mode)


def _prompts_without_check(mode):
    vlm = EvidenceBlindVLM()
    LookBackCritic(vlm, mode=mode).lookback(IMAGE, QUESTION, STEPS, "No")
    return vlm.prompts


def test_the_registry_checks_the_world_vlms_evidence_and_nobody_elses():
    class Named(EvidenceBlindVLM):
        name = "world"

    assert CRITICS["lookback"](vlm=Named()).check_evidence is True
    assert CRITICS["lookback"](vlm=Named(), check_evidence=False).check_evidence is False
    assert CRITICS["lookback"](vlm=EvidenceBlindVLM()).check_evidence is False


def test_critique_cli_says_which_answer_contradicts_a_step_and_the_final_answer(
    tmp_path, monkeypatch, capsys
):
    from selfcorrect.cli import main

    def build(*, vlm=None, device="cpu", **options):
        return LookBackCritic(EvidenceBlindVLM(), check_evidence=True, **options)

    monkeypatch.setitem(CRITICS, "lookback", build)
    path = tmp_path / "image.png"
    IMAGE.save(path)
    chain = "\n".join(f"Step {i + 1}: {s}" for i, s in enumerate(STEPS)) + "\nAnswer: No"
    code = main(["critique", str(path), "--question", QUESTION, "--answer", chain])
    out = capsys.readouterr().out
    why = f"why: asked {EXISTS!r}, the image says 'Yes'"
    assert code == 1 and out.startswith("FAIL")
    assert f"[ok] step 1: {STEPS[0]}" in out and f"[x ] step 2: {STEPS[1]}\n         {why}" in out
    assert f"[x ] answer: No\n         {why}" in out
