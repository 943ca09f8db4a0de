"""VISCO's LookBack critic: batching, the trained prompt formats, strict JSON parsing, correction.

A scripted fake VLM defined here answers each prompt from a table (and records every call), so
the tests can count chat calls and compare prompts character for character, including against
the world VLM's own training conversations. A tiny random LLaVA of the real class checks the
plumbing: its garbage output must give an unparsed verdict, not a crash.
"""

import json
import math

import pytest
import torch
from PIL import Image

from selfcorrect.critics import CRITICS, StepCritic
from selfcorrect.critics import prompts as P
from selfcorrect.critics.lookback import (
    LookBackCritic,
    as_chain,
    parse_queries,
    parse_solution,
    parse_step_verdict,
    verdict_slots,
)
from selfcorrect.critics.verdicts import StepVerdict

IMAGE = Image.new("RGB", (32, 32), (220, 30, 30))
QUESTION = "How many red circles are there?"
STEPS = ["There is a red circle at [10, 10, 30, 30].", "So there is 1 red circle."]
ANSWER = "1"
CHAIN = "Step 1: There is a red circle at [10, 10, 30, 30].\nStep 2: So there is 1 red circle."


class ScriptedVLM:
    """``chat`` answers each prompt from ``replies`` (a dict, or a function of the prompt)."""

    def __init__(self, replies=None, default=""):
        self.replies = replies or {}
        self.default = default
        self.calls = []

    def chat(self, images, messages, *, max_new_tokens=256, batch_size=8, **options):
        assert len(images) == len(messages)
        self.calls.append({"images": images, "prompts": list(messages), "max_new_tokens": max_new_tokens})
        if callable(self.replies):
            return [self.replies(m) for m in messages]
        return [self.replies.get(m, self.default) for m in messages]

    @property
    def prompts(self):
        return [p for call in self.calls for p in call["prompts"]]


def _queries_prompt(steps):
    lines = "\n".join(f"Step {i + 1}: {s}" for i, s in enumerate(steps))
    return (
        f"Question: {QUESTION}\nReasoning so far:\n{lines}\nList the questions that check the last step "
        "against the image, one per line, or N/A."
    )


def _critique_prompt(evidence=""):
    return (
        "Evaluate the accuracy of each reasoning step and the final answer to the question about the "
        "image. Judge each step in isolation. If a step is incorrect, briefly explain why.\n"
        f"Question: {QUESTION}\nReasoning:\n{CHAIN}\nAnswer: 1\n{evidence}"
        'Reply in JSON: {"step_1": {"correctness": true, "explanation": ""}, ..., "answer_correctness": true}'
    )


GROUND_Q = "Find every red circle. Answer with bounding boxes."
COUNT_Q = "How many red circles are there?"
VERDICT = {
    "step_1": {"correctness": True, "explanation": ""},
    "step_2": {"correctness": False, "explanation": "there are 2, not 1"},
    "answer_correctness": False,
}


def _scripted():
    evidence = f"Visual information:\n* Step 1: {GROUND_Q} - [10, 10, 30, 30], [60, 60, 80, 80]\n* Step 2: {COUNT_Q} - 2\n"
    return ScriptedVLM(
        {
            f"{QUESTION} Think step by step.": "Step 1: There are two red circles.\nAnswer: 2",
            _queries_prompt(STEPS[:1]): GROUND_Q,
            _queries_prompt(STEPS): COUNT_Q,
            f"{GROUND_Q} Answer briefly.": "[10, 10, 30, 30], [60, 60, 80, 80]",
            f"{COUNT_Q} Answer briefly.": "2",
            _critique_prompt(evidence): json.dumps(VERDICT),
        }
    )


# ------------------------------------------------------------------------ the LookBack steps


def test_lookback_makes_four_batched_calls_in_the_trained_formats():
    vlm = _scripted()
    critic = LookBackCritic(vlm)
    assert isinstance(critic, StepCritic) and critic.kinds == {"steps"}
    trace = critic.lookback(IMAGE, QUESTION, STEPS, ANSWER)
    assert len(vlm.calls) == 4  # solve, all prefixes' queries, all verifications, the critique
    assert [len(c["prompts"]) for c in vlm.calls] == [1, 2, 2, 1]
    for call in vlm.calls:  # the same decoded image in every prompt of every call
        assert all(im is vlm.calls[0]["images"][0] for im in call["images"])
    assert vlm.calls[0]["prompts"] == ["How many red circles are there? Think step by step."]
    assert vlm.calls[1]["prompts"] == [_queries_prompt(STEPS[:1]), _queries_prompt(STEPS)]
    assert vlm.calls[2]["prompts"] == [f"{GROUND_Q} Answer briefly.", f"{COUNT_Q} Answer briefly."]
    assert trace.reference.answer == "2" and trace.reference.steps == ["There are two red circles."]
    assert trace.questions == [[GROUND_Q], [COUNT_Q]] and trace.answers[1] == ["2"]
    v = trace.verdict
    assert not v.unparsed and v.steps == [True, False] and v.answer_correct is False
    assert v.explanations == ["", "there are 2, not 1"] and v.first_error == 1
    assert v.critic == "lookback"
    assert json.loads(json.dumps(trace.to_dict()))["evidence"][1] == [{"question": COUNT_Q, "answer": "2"}]
    # a Step-text chain and its Answer line give the same prompts
    again = _scripted()
    assert LookBackCritic(again).critique_steps(IMAGE, QUESTION, CHAIN + "\nAnswer: 1") == v
    assert again.prompts == vlm.prompts


def test_no_questions_means_no_verify_call_and_the_plain_prompt():
    vlm = ScriptedVLM({_critique_prompt(): json.dumps(VERDICT)}, default=P.NOT_APPLICABLE)
    verdict = LookBackCritic(vlm, solve_first=False).critique_steps(IMAGE, QUESTION, STEPS, ANSWER)
    assert len(vlm.calls) == 2 and vlm.calls[-1]["prompts"] == [_critique_prompt()]
    assert verdict.steps == [True, False]


def test_repeated_questions_are_verified_once_and_the_reference_is_optional():
    def reply(prompt):
        if prompt.startswith("Question:"):
            return f"1. {COUNT_Q}\n2. {COUNT_Q}\n- Is it red?"
        return "2" if prompt.endswith("Answer briefly.") else "Step 1: x\nAnswer: 2"

    vlm = ScriptedVLM(reply)
    trace = LookBackCritic(vlm, with_reference=True).lookback(IMAGE, QUESTION, STEPS, ANSWER)
    assert trace.questions == [[COUNT_Q, "Is it red?"]] * 2
    assert vlm.calls[2]["prompts"] == [f"{COUNT_Q} Answer briefly.", "Is it red? Answer briefly."]
    assert trace.prompt.endswith(
        "* Step 2: Is it red? - 2\nReference answer (it MAY OR MAY NOT be correct): 2\nReply in JSON: "
        '{"step_1": {"correctness": true, "explanation": ""}, ..., "answer_correctness": true}'
    )
    assert trace.verdict.unparsed  # "2" is no JSON
    with pytest.raises(ValueError):
        LookBackCritic(vlm, with_reference=True, solve_first=False)


def test_plain_critique_is_one_call_without_evidence():
    vlm = ScriptedVLM({_critique_prompt(): "```json\n" + json.dumps(VERDICT) + "\n```"})
    verdict = LookBackCritic(vlm).critique_plain(IMAGE, QUESTION, STEPS, ANSWER)
    assert len(vlm.calls) == 1 and verdict.steps == [True, False] and verdict.critic == "lookback:plain"


def test_long_chains_have_no_step_limit():
    steps = [f"There is object {i}." for i in range(9)]
    reply = {
        f"step_{i + 1}": {"correctness": i != 7, "explanation": "no" if i == 7 else ""} for i in range(9)
    }
    reply["answer_correctness"] = "no"
    vlm = ScriptedVLM(lambda p: json.dumps(reply) if p.startswith("Evaluate") else "N/A")
    verdict = LookBackCritic(vlm).critique_steps(IMAGE, QUESTION, steps, "9")
    assert len(vlm.calls[1]["prompts"]) == 9 and "Step 9: There is object 8." in vlm.calls[1]["prompts"][8]
    assert verdict.first_error == 7 and verdict.steps.count(True) == 8 and verdict.answer_correct is False


# ----------------------------------------------------------- agreement with the training data


def _split_critique(text):
    head, rest = text.split("\nQuestion: ", 1)
    question, rest = rest.split("\nReasoning:\n", 1)
    chain, rest = rest.split("\nAnswer: ", 1)
    answer, rest = rest.split("\n", 1)
    evidence = rest.split("Reply in JSON:")[0]
    bullets = []  # (question, answer) per bullet; each names its step, in order
    for k, line in enumerate(evidence.splitlines()[1:]):
        step, checked = line.removeprefix("* Step ").split(": ", 1)
        assert int(step) == k + 1, line
        bullets.append(checked.split(" - ", 1))
    return question, chain, answer, bullets


@pytest.fixture(scope="module")
def training_examples():
    from selfcorrect.world.conversations import ConversationSet

    def user_and_reply(example):
        return example.messages[0]["content"][-1]["text"], example.messages[1]["content"][0]["text"]

    mix = {"critique": 1.0, "queries": 1.0, "steps": 1.0}
    return [(e.task, e.images[0], *user_and_reply(e)) for e in ConversationSet(36, seed=5, mix=mix)]


def test_prompts_and_verdicts_match_the_world_training_conversations(training_examples):
    seen = {"evidence": 0, "plain": 0, "queries": 0, "steps": 0}
    for task, image, asked, reply in training_examples:
        if task == "steps":  # SOLVE's prompt and answer format
            question = asked.removesuffix(" Think step by step.")
            vlm = ScriptedVLM({asked: reply})
            solution = LookBackCritic(vlm).solve(image, question)
            assert vlm.prompts == [asked] and solution.parsed and solution.text() == reply
            seen["steps"] += 1
        elif task == "queries":  # the last step's questions, one per line, or N/A
            question = asked.split("\n")[0].removeprefix("Question: ")
            chain = asked.split("Reasoning so far:\n")[1].split("\nList the questions")[0]
            steps, _ = as_chain(chain, "x")
            vlm = ScriptedVLM({asked: reply})
            questions = LookBackCritic(vlm).visual_queries(image, question, steps)
            assert vlm.prompts[-1] == asked
            assert questions[-1] == ([] if reply == P.NOT_APPLICABLE else [reply])
            seen["queries"] += 1
        else:  # the critique, with or without LookBack's evidence; the reply is VISCO's JSON
            question, chain, answer, bullets = _split_critique(asked)
            steps, _ = as_chain(chain, answer)
            if bullets:  # every training step carries one query, in order
                assert len(bullets) == len(steps)
                lines = chain.split("\n")
                queries = {
                    P.VISUAL_QUERIES.format(question=question, steps="\n".join(lines[: i + 1])): q
                    for i, (q, _) in enumerate(bullets)
                }
                answers = {P.VERIFY.format(question=q): a for q, a in bullets}
                vlm = ScriptedVLM({**queries, **answers, asked: reply}, default="Answer: ?")
                verdict = LookBackCritic(vlm).critique_steps(image, question, steps, answer)
                seen["evidence"] += 1
            else:
                vlm = ScriptedVLM({asked: reply})
                verdict = LookBackCritic(vlm).critique_plain(image, question, steps, answer)
                seen["plain"] += 1
            assert vlm.prompts[-1] == asked
            truth = json.loads(reply)
            assert not verdict.unparsed
            assert verdict.steps == [truth[f"step_{i + 1}"]["correctness"] for i in range(len(steps))]
            assert verdict.answer_correct == truth["answer_correctness"]
    assert all(seen.values()), seen


# ---------------------------------------------------------------------------------- parsing


def test_json_parsing_follows_visco():
    good = json.dumps(VERDICT)
    fenced = f'Let me check.\n```json\n{{"step_1": 1}}\n```\nOn reflection:\n```json\n{good}\n```\nDone.'
    assert parse_step_verdict(fenced, 2).steps == [True, False]  # the last json block wins
    prose = "Here is my verdict: " + good + " Hope this helps."
    assert parse_step_verdict(prose, 2).answer_correct is False  # the outermost {...}
    strings = json.dumps(
        {
            "Step_1": {"Correctness": "Yes", "Explanation": ""},
            "STEP_2": {"correctness": "incorrect", "explanation": None},
            "Answer_Correctness": {"correctness": "Correct."},
        }
    )
    v = parse_step_verdict(strings, 2)
    assert (v.steps, v.explanations, v.answer_correct, v.unparsed) == ([True, False], ["", ""], True, False)
    assert parse_step_verdict('{"step\\_1": {"correctness": "true", "explanation": ""}, '
                              '"answer\\_correctness": "false"}', 1).steps == [True]  # fmt: skip


@pytest.mark.parametrize(
    "text",
    [
        "",
        "All steps are correct.",
        "{not json}",
        "[true, true]",
        json.dumps({"step_1": {"correctness": True, "explanation": ""}}),  # no answer_correctness
        json.dumps({"step_1": {"correctness": True, "explanation": ""}, "answer_correctness": "maybe"}),
        json.dumps(
            {
                "step_1": {"correctness": True},
                "step_2": {"correctness": True, "explanation": ""},
                "answer_correctness": True,
            }
        ),  # fmt: skip
        json.dumps(
            {"step_1": {"correctness": True, "explanation": ""}, "answer_correctness": True}
        ),  # 1 of 2
        json.dumps({"step_1": True, "step_2": True, "answer_correctness": True}),
        None,
    ],
)
def test_malformed_critiques_are_unparsed_never_all_correct(text):
    v = parse_step_verdict(text, 2, critic="lookback")
    assert isinstance(v, StepVerdict) and v.unparsed
    assert v.steps == [None, None] and v.answer_correct is None and v.first_error is None


def test_solution_queries_and_chain_parsing():
    s = parse_solution("Let me see.\nStep 1: A red circle\nat the top.\n**Step 2:** Two.\nFinal answer: 2\n")
    assert s.steps == ["A red circle at the top.", "Two."] and s.answer == "2"
    assert not parse_solution("I think it is two.").parsed
    assert parse_queries("N/A") == [] and parse_queries("n/a.\n\n") == []
    assert parse_queries("1. Is it red?\n2) Is it round?\n* Is it red?\n\n", max_questions=5) == [
        "Is it red?",
        "Is it round?",
    ]
    assert len(parse_queries("\n".join(f"q{i}?" for i in range(10)))) == 4
    assert as_chain("Blue.") == (["Blue."], "Blue.")  # a plain answer is a one-step chain
    assert as_chain(CHAIN) == (STEPS, "So there is 1 red circle.")  # no Answer line: the last step
    assert as_chain(["a\nb", "c"], "d ") == (["a b", "c"], "d")
    for bad in ("", [], ["ok", " "]):
        with pytest.raises(ValueError):
            as_chain(bad, "x")


# ------------------------------------------------------------------------------- correction


def test_correction_uses_the_critique_then_falls_back_to_a_fresh_solve():
    verdict = parse_step_verdict(json.dumps(VERDICT), 2)
    expected = (
        "How many red circles are there?\nBelow is a step-by-step answer to this question, with a critique "
        "of each reasoning step as well as the final answer. The critique may or may not be correct.\n"
        "Step 1: There is a red circle at [10, 10, 30, 30].\n  - Critique: correct.\n"
        "Step 2: So there is 1 red circle.\n  - Critique: incorrect. Explanation: there are 2, not 1\n"
        "Answer: 1\n  - Critique: incorrect.\nTaking the critique into account, think step by step and "
        'answer the question again. Write each step as "Step i: ..." on its own line and end with '
        '"Answer: ...".'
    )
    vlm = ScriptedVLM({expected: "Step 1: Two red circles.\nAnswer: 2"})
    fixed = LookBackCritic(vlm).correct(IMAGE, QUESTION, STEPS, ANSWER, verdict)
    assert vlm.prompts == [expected] and fixed.asked and not fixed.fallback and fixed.solution.answer == "2"

    vlm = ScriptedVLM({f"{QUESTION} Think step by step.": "Step 1: Two.\nAnswer: 2"}, default="{}")
    fixed = LookBackCritic(vlm).correct(IMAGE, QUESTION, CHAIN, ANSWER, verdict)  # no Answer line: SOLVE
    assert len(vlm.calls) == 2 and fixed.fallback and fixed.solution.answer == "2"
    vlm = ScriptedVLM(default="Answer: 2")
    assert LookBackCritic(vlm, correction="solve").correct(IMAGE, QUESTION, STEPS, ANSWER, verdict).fallback
    assert vlm.prompts == [f"{QUESTION} Think step by step."]
    short = LookBackCritic(vlm, setting="A").correction_prompt(QUESTION, STEPS, ANSWER, verdict)
    assert "Critique: correct." not in short and "with a critique of the answer." in short


def test_correction_asks_nothing_for_unparsed_or_clean_verdicts():
    vlm = ScriptedVLM()
    critic = LookBackCritic(vlm)
    clean = StepVerdict([True, True], ["", ""], True)
    for verdict in (parse_step_verdict("garbage", 2), clean):
        fixed = critic.correct(IMAGE, QUESTION, STEPS, ANSWER, verdict)
        assert not fixed.asked and fixed.solution.steps == STEPS and fixed.solution.answer == ANSWER
    assert vlm.calls == []
    with pytest.raises(ValueError):
        critic.correct(IMAGE, QUESTION, STEPS, ANSWER, StepVerdict([True], [""], True))


def test_registry_builds_lookback_with_an_injected_vlm():
    vlm = ScriptedVLM()
    critic = CRITICS["lookback"](vlm=vlm, max_new_tokens=17, with_reference=True)
    assert isinstance(critic, LookBackCritic) and critic.vlm is vlm and critic.max_new_tokens == 17
    with pytest.raises(ValueError):
        LookBackCritic(vlm, correction="guess")


# ------------------------------------------------------------------------------ log-prob mode


class ScoringVLM(ScriptedVLM):
    """A :class:`ScriptedVLM` whose ``score`` gives each slot the P(true) of ``p_true`` in turn."""

    def __init__(self, p_true, **options):
        super().__init__(**options)
        self.p_true, self.scored = p_true, []

    def score(self, images, prompts, continuations, *, batch_size=16):
        self.scored.append({"images": images, "prompts": list(prompts), "continuations": continuations})
        assert len(images) == len(prompts) == len(continuations) == len(self.p_true)
        return torch.tensor([[math.log(p), math.log(1 - p)] for p in self.p_true])


def test_verdict_slots_are_prefixes_of_the_trained_json():
    for n in (1, 3):
        slots = verdict_slots(n)
        assert len(slots) == n + 1
        for k in range(n):  # step k judged wrong after correct ones, as with_errors writes it
            verdict = {f"step_{i + 1}": {"correctness": i != k, "explanation": ""} for i in range(n)}
            assert json.dumps({**verdict, "answer_correctness": True}).startswith(slots[k] + "false")
        clean = {f"step_{i + 1}": {"correctness": True, "explanation": ""} for i in range(n)}
        for slot in slots:
            assert json.dumps({**clean, "answer_correctness": True}).startswith(slot + "true")


def test_logprob_mode_scores_every_judgement_in_one_call():
    vlm = ScoringVLM([0.9, 0.2, 0.7], replies=_scripted().replies)
    critic = LookBackCritic(vlm, mode="logprob", threshold=0.5)
    trace = critic.lookback(IMAGE, QUESTION, STEPS, ANSWER)
    assert len(vlm.calls) == 3 and len(vlm.scored) == 1  # solve, queries, verify; then one score
    [scored] = vlm.scored
    assert scored["prompts"] == [trace.prompt] * 3 and all(
        im is scored["images"][0] for im in scored["images"]
    )
    assert [c[0] for c in scored["continuations"]] == [s + "true" for s in verdict_slots(2)]
    v = trace.verdict
    assert v.steps == [True, False] and v.answer_correct is True and v.first_error == 1
    assert v.step_probabilities == pytest.approx([0.9, 0.2]) and not v.unparsed and v.critic == "lookback"
    plain = LookBackCritic(ScoringVLM([0.3, 0.6, 0.4]), mode="logprob", threshold=0.5)
    v = plain.critique_plain(IMAGE, QUESTION, STEPS, ANSWER)
    assert v.steps == [False, True] and v.answer_correct is False and v.critic == "lookback:plain"
    assert plain.vlm.calls == [] and plain.vlm.scored[0]["prompts"] == [_critique_prompt()] * 3
    # the threshold decides
    strict = LookBackCritic(ScoringVLM([0.9, 0.2, 0.7]), mode="logprob", threshold=0.95)
    assert strict.critique_plain(IMAGE, QUESTION, STEPS, ANSWER).steps == [False, False]
    with pytest.raises(ValueError):
        LookBackCritic(vlm, mode="guess")
    with pytest.raises(ValueError):
        LookBackCritic(vlm, mode="logprob", threshold=1.5)


# ------------------------------------------------------------------ tiny LLaVA: plumbing only


def test_tiny_llava_gives_an_unparsed_verdict_not_a_crash(tmp_path):
    from selfcorrect.vision.testing import build_tiny_vlm
    from selfcorrect.vision.vlm import VLM

    vlm = VLM.from_pretrained(build_tiny_vlm("llava", tmp_path / "llava"))
    # the tiny model's context is 512 byte-level tokens: a short chain keeps the critique inside it
    critic = LookBackCritic(vlm, max_new_tokens=6, answer_tokens=3, max_questions=2)
    trace = critic.lookback(IMAGE, "How many?", ["A red circle.", "So 1."], ANSWER)
    assert (
        trace.verdict.unparsed and trace.verdict.steps == [None, None] and isinstance(trace.verdict.raw, str)
    )
    assert len(trace.questions) == 2 and all(len(q) <= 2 for q in trace.questions)
    assert [len(a) for a in trace.answers] == [len(q) for q in trace.questions]
    assert critic.critique_plain(IMAGE, "How many?", "Step 1: A red circle.\nStep 2: So 1.", ANSWER).unparsed
    assert not critic.correct(IMAGE, "How many?", ["A red circle.", "So 1."], ANSWER, trace.verdict).asked


def test_tiny_llava_logprob_mode_gives_probabilities(tmp_path):
    from selfcorrect.vision.testing import build_tiny_vlm
    from selfcorrect.vision.vlm import VLM

    vlm = VLM.from_pretrained(build_tiny_vlm("llava", tmp_path / "llava"))
    # one short step and no visual questions keep the scored JSON inside its 512-token context
    critic = LookBackCritic(vlm, mode="logprob", max_new_tokens=6, max_questions=0)
    for v in (
        critic.critique_steps(IMAGE, "How many?", ["So 1."], ANSWER),
        critic.critique_plain(IMAGE, "How many?", ["So 1."], ANSWER),
    ):
        assert not v.unparsed and len(v.step_probabilities) == 1
        assert all(0.0 <= p <= 1.0 for p in v.step_probabilities)
        assert v.steps == [p >= 0.5 for p in v.step_probabilities] and v.answer_correct in (True, False)
