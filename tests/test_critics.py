"""Critics: verdict types, strict parsers, LLaVA-Critic (log-prob and generate), DSG questions, CLIPScore.

Two kinds of model: a tiny random LLaVA of the real transformers class for plumbing (shapes,
both orders, unparsed verdicts), and a small deterministic fake VLM defined here for the numbers
(expected scores, order combination, dependency zeroing, preference pairs), checked against values
worked out by hand.
"""

import json
import math

import pytest
import torch
from PIL import Image

from selfcorrect.critics import CRITICS, ImageCritic, PairwiseCritic
from selfcorrect.critics import prompts as P
from selfcorrect.critics.clip import ClipCritic, clipscore
from selfcorrect.critics.llava_critic import (
    LlavaCritic,
    combine_orders,
    comparison_margin,
    preference_pair,
)
from selfcorrect.critics.parsing import (
    parse_better,
    parse_boxes,
    parse_mt_bench,
    parse_preference,
    parse_score,
    parse_score_pair,
)
from selfcorrect.critics.verdicts import Finding, ImageVerdict, PairwiseVerdict, StepVerdict, TokenVerdict
from selfcorrect.critics.vqa import VQACritic, answer_scores, decompose, vqascore
from selfcorrect.world.negatives import one_edit_variants

RED = Image.new("RGB", (32, 32), (220, 30, 30))
BLUE = Image.new("RGB", (32, 32), (30, 30, 220))
GREEN = Image.new("RGB", (40, 24), (30, 200, 30))


# ------------------------------------------------------------------------------------ fake VLM


class FakeVLM:
    """A deterministic stand-in with the VLM's ``score`` / ``chat`` signatures.

    ``logprob(images, prompt, continuation)`` and ``reply(images, prompt)`` decide the outputs;
    every call is recorded.
    """

    def __init__(self, logprob=None, reply=None):
        self.logprob = logprob or (lambda images, prompt, c: 0.0)
        self.reply = reply or (lambda images, prompt: "")
        self.calls = []

    @staticmethod
    def _groups(images, n):
        images = images if isinstance(images, list) else [images] * n
        return [im if isinstance(im, list) else [im] for im in images]

    def score(self, images, prompts, continuations, **_):
        self.calls.append(("score", len(prompts)))
        groups = self._groups(images, len(prompts))
        return torch.tensor(
            [[float(self.logprob(g, p, c)) for c in continuations] for g, p in zip(groups, prompts)]
        )

    def chat(self, images, prompts, **_):
        self.calls.append(("chat", len(prompts)))
        return [self.reply(g, p) for g, p in zip(self._groups(images, len(prompts)), prompts)]


def _log(p):
    return math.log(p) if p > 0 else -1e4


# -------------------------------------------------------------------------------------- verdicts


def test_unparsed_verdicts_have_no_score_never_zero():
    v = ImageVerdict.unparsable("blah", critic="x")
    assert v.score is None and v.passed is None and v.unparsed and v.raw == "blah"
    with pytest.raises(ValueError):
        ImageVerdict(score=0.0, passed=False, unparsed=True)
    with pytest.raises(ValueError):
        ImageVerdict(score=None, passed=None)  # parsed but no score
    with pytest.raises(ValueError):
        ImageVerdict(score=1.5, passed=True)
    with pytest.raises(ValueError):
        PairwiseVerdict(preference="left", confidence=0.5, both_orders_agree=True)
    with pytest.raises(ValueError):
        PairwiseVerdict(preference=None, confidence=None, both_orders_agree=None)  # must say unparsed


def test_verdicts_serialise_to_json():
    finding = Finding("exactly two red circles", False, 0.2, (0.1, 0.2, 0.3, 0.4), "found 3")
    image = ImageVerdict(0.6, False, [finding], "fails", critic="vqa", details={"a": 1})
    pair = PairwiseVerdict("first", 0.7, True, {"first": 0.7, "second": 0.2, "tie": 0.1})
    steps = StepVerdict([True, False], ["", "wrong colour"], answer_correct=False)
    tokens = TokenVerdict(["a", " red", " circle"], [0.9, 0.2, 0.8], spans=[(1, 5)])
    out = json.loads(json.dumps([v.to_dict() for v in (image, pair, steps, tokens)]))
    assert out[0]["findings"][0]["box"] == [0.1, 0.2, 0.3, 0.4]
    assert out[1]["preference"] == "first"
    assert steps.first_error == 1 and out[2]["steps"][1]["explanation"] == "wrong colour"
    assert tokens.flagged == [1] and not tokens.response_correct
    assert image.failed_findings == [finding]


# --------------------------------------------------------------------------------------- parsing


@pytest.mark.parametrize(
    "text, expected",
    [
        ("Final Score: 85\nThe image shows two circles.", 85.0),
        ("Final Score: 0\nNothing matches.", 0.0),
        ("Final Score: 100", 100.0),
        ("The response is accurate.\n\nFinal Score: 72", 72.0),
        ("Final Score: 85/100", 85.0),
        ("Final Score: 7/10", 70.0),
        ("**Final Score:** 90", 90.0),
        ("Final Score: [65]", 65.0),
        ("final score: 42.5", 42.5),
        ("Final Score: 80. ... as I said, Final Score: 80", 80.0),
        ("Final Score: 80\nFinal Score: 60", None),  # contradictory
        ("Final Score: 120", None),  # out of range
        ("Final Score: 1000", None),
        ("Final Score: 11/10", None),
        ("Final Score: 3/7", None),  # unknown scale
        ("Final Score: -5", None),
        ("Final Score: N/A", None),
        ("The score is 85.", None),  # no verdict line
        ("", None),
        ("#$%^ zzzz q8!! 9", None),
        ("Final Scor: 70", None),
    ],
)
def test_parse_score(text, expected):
    assert parse_score(text) == expected


@pytest.mark.parametrize(
    "text, expected",
    [
        ("8 6\nAssistant 1 was more precise.", (8.0, 6.0)),
        ("\n7, 9\nreasons", (7.0, 9.0)),
        ("10 10", (10.0, 10.0)),
        ("8.5 7", (8.5, 7.0)),
        ("0 6", None),  # below 1
        ("11 6", None),
        ("8 6 5", None),
        ("Scores: 8 6", None),  # not a bare first line
        ("garbage", None),
    ],
)
def test_parse_score_pair(text, expected):
    assert parse_score_pair(text) == expected


@pytest.mark.parametrize(
    "text, expected",
    [
        ("My final verdict is: [[A>>B]]", ("first", True)),
        ("[[A>B]]", ("first", False)),
        ("Verdict: [[A=B]]", ("tie", False)),
        ("[[B>A]]", ("second", False)),
        ("[[ B >> A ]]", ("second", True)),
        ("[[A<B]]", ("second", False)),
        ("[[A]]", ("first", False)),
        ("[[B]]", ("second", False)),
        ("[[C]]", ("tie", False)),
        ("[[A>B]] ... actually [[B>A]]", None),
        ("[[D]]", None),
        ("A > B", None),
    ],
)
def test_parse_mt_bench(text, expected):
    assert parse_mt_bench(text) == expected


@pytest.mark.parametrize(
    "text, expected",
    [
        ("The better response: first\nFirst: correct.", "first"),
        ("The better response: [second]", "second"),
        ("The better response: [The first response]", "first"),
        ("The better image: second\nFirst: It should show ...", "second"),
        ("**The better response:** first", "first"),
        ("Overall, the better response is the second one.", "second"),
        ("Both responses are equally good.\nFirst: ... Second: ...", "tie"),
        ("Both images are equally good.", "tie"),
        ("The better response: tie", "tie"),
        ("The better response: first. Both responses are equally good.", None),  # contradictory
        ("It is hard to say which is the better response.", None),
        ("The first response is nice.", None),
        ("first second first", None),
        ("", None),
    ],
)
def test_parse_better(text, expected):
    assert parse_better(text) == expected


def test_parse_preference_accepts_every_pairwise_format_and_refuses_contradictions():
    assert parse_preference("The better response: [first]") == "first"
    assert parse_preference("analysis...\n[[B>>A]]") == "second"
    assert parse_preference("6 9\nAssistant 2 is better") == "second"
    assert parse_preference("7 7\nboth fine") == "tie"
    assert parse_preference("The better response: first\n[[B>A]]") is None
    assert parse_preference("5 2\nThe better response: second") is None
    assert parse_preference("I like turtles") is None


def test_parse_boxes():
    assert parse_boxes("[10, 20, 35, 45], [50, 50, 60, 70]") == [(0.1, 0.2, 0.35, 0.45), (0.5, 0.5, 0.6, 0.7)]
    assert parse_boxes("[30, 20, 10, 45] [0, 0, 150, 10] None") == []


# ------------------------------------------------------------------ LLaVA-Critic: the numbers


def _score_fake(distribution: dict[int, float]) -> FakeVLM:
    def logprob(images, prompt, continuation):
        assert continuation.startswith(P.SCORE_PREFIX) and continuation.endswith("\n")
        return _log(distribution.get(int(continuation[len(P.SCORE_PREFIX) :]), 0.0))

    return FakeVLM(logprob)


def test_logprob_pointwise_is_the_expected_score():
    fake = _score_fake({70: 0.5, 100: 0.25, 20: 0.25})
    critic = LlavaCritic(fake)
    verdict = critic.critique(RED, "a red circle")
    assert verdict.score == pytest.approx((0.5 * 70 + 0.25 * 100 + 0.25 * 20) / 100)  # 0.65
    assert verdict.passed is False and not verdict.unparsed  # threshold 0.8
    assert verdict.details["distribution"]["70"] == pytest.approx(0.5)
    assert sum(verdict.details["distribution"].values()) == pytest.approx(1.0)
    assert fake.calls == [("score", 1)]  # one forward pass, no decoding
    answer = critic.critique_answer(RED, "What colour is the circle?", "red")
    assert answer.score == pytest.approx(0.65)


def test_logprob_pointwise_softmaxes_over_the_candidates_only():
    # unnormalised log-probs (the rest of the vocabulary takes mass): only ratios matter
    fake = FakeVLM(lambda im, p, c: -3.0 if c == f"{P.SCORE_PREFIX}90\n" else -3.0 - math.log(3.0))
    verdict = LlavaCritic(fake, score_values=[30, 90]).critique(RED, "x")
    assert verdict.score == pytest.approx((0.75 * 90 + 0.25 * 30) / 100)


def test_generate_mode_parses_strictly_and_marks_failures_unparsed():
    replies = {"good": "Final Score: 90\nIt shows everything.", "bad": "The image is nice!!"}
    fake = FakeVLM(reply=lambda images, prompt: replies["good" if "good" in prompt else "bad"])
    critic = LlavaCritic(fake, mode="generate")
    good, bad = critic.critique_many([RED, BLUE], ["a good prompt", "another prompt"])
    assert good.score == pytest.approx(0.9) and good.passed and good.explanation == "It shows everything."
    assert bad.unparsed and bad.score is None and bad.passed is None and bad.raw == replies["bad"]


def test_combine_orders_by_hand():
    v = combine_orders((0.6, 0.3, 0.1), (0.2, 0.7, 0.1))
    assert v.probabilities == pytest.approx({"first": 0.65, "second": 0.25, "tie": 0.1})
    assert v.preference == "first" and v.confidence == pytest.approx(0.65) and v.both_orders_agree
    # pure position bias: "first" whatever is shown first -> the orders disagree, a tie
    biased = combine_orders((0.7, 0.2, 0.1), (0.7, 0.2, 0.1))
    assert biased.preference == "tie" and biased.both_orders_agree is False
    assert biased.probabilities == pytest.approx({"first": 0.45, "second": 0.45, "tie": 0.1})


def _pair_fake(good_image, p_good=0.8, p_tie=0.05):
    """Prefers good_image wherever it is shown, with a bias towards the first position."""

    def logprob(images, prompt, continuation):
        good_first = images[0] is good_image
        p_first = (p_good if good_first else 1 - p_good - p_tie) + (0.05 if not good_first else -0.05)
        probs = {P.BETTER_IMAGE + P.FIRST: p_first, P.BETTER_IMAGE + P.SECOND: 1 - p_tie - p_first}
        return _log(probs.get(continuation, p_tie))

    return FakeVLM(logprob)


def test_logprob_pairwise_asks_both_orders_and_maps_them_back():
    fake = _pair_fake(BLUE)
    critic = LlavaCritic(fake)
    v = critic.compare(RED, BLUE, "a blue square")
    # order (RED, BLUE): first 0.2, second 0.75; order (BLUE, RED): first 0.75, second 0.2
    assert fake.calls == [("score", 2)]
    assert v.preference == "second" and v.both_orders_agree
    assert v.probabilities == pytest.approx({"first": 0.2, "second": 0.75, "tie": 0.05})
    assert critic.compare(BLUE, RED, "a blue square").preference == "first"


def test_generate_pairwise_cancels_position_bias_and_reports_unparsed():
    always_first = FakeVLM(reply=lambda images, prompt: "The better response: first\nFirst: fine.")
    v = LlavaCritic(always_first, mode="generate").compare_answers(RED, "Colour?", "red", "blue")
    assert v.preference == "tie" and v.both_orders_agree is False and len(v.raw) == 2
    consistent = FakeVLM(
        reply=lambda images, prompt: (
            "The better response: " + ("first" if "first response: [red]" in prompt else "second")
        )
    )
    v = LlavaCritic(consistent, mode="generate").compare_answers(RED, "Colour?", "red", "blue")
    assert v.preference == "first" and v.both_orders_agree and v.confidence == 1.0
    half = FakeVLM(reply=lambda images, prompt: "[[A>B]]" if "first response: [red]" in prompt else "hmm")
    v = LlavaCritic(half, mode="generate").compare_answers(RED, "Colour?", "red", "blue")
    assert v.unparsed and v.preference is None and v.confidence is None


def test_preference_pair_by_hand():
    # a[i][j]: i shown first, j second; a_ij = P(second better) - P(first better)
    a = [[None, -0.8, 0.2], [0.6, None, 0.5], [-0.4, -0.5, None]]
    pair = preference_pair(a)
    # r_0 = (a10 + a20) - (a01 + a02) = 0.2 + 0.6; r_1 = (a01 + a21) - (a10 + a12); r_2 likewise
    assert pair.rewards == pytest.approx([0.8, -2.4, 1.6])
    assert (pair.chosen, pair.rejected, pair.unparsed) == (2, 1, 0)
    a[2][1] = None  # an unreadable comparison: the rest are rescaled to all 2(K-1) = 4
    pair = preference_pair(a)
    assert pair.rewards == pytest.approx([0.8, -1.9 * 4 / 3, 1.1 * 4 / 3])
    assert pair.unparsed == 1
    assert comparison_margin((0.7, 0.2, 0.1)) == pytest.approx(-0.5) and comparison_margin(None) is None
    assert preference_pair([[None, 0.0], [0.0, None]]).chosen is None  # all equal: no pair


def test_rank_answers_runs_every_ordered_pair_in_one_call():
    truth = "red"

    def logprob(images, prompt, continuation):
        first = prompt.split("The first response: [")[1].split("]")[0]
        second = prompt.split("The second response: [")[1].split("]")[0]
        p_first = 0.9 if first == truth else 0.1 if second == truth else 0.5
        table = {P.BETTER_RESPONSE + P.FIRST: p_first, P.BETTER_RESPONSE + P.SECOND: 1 - p_first}
        return _log(table.get(continuation, 1e-9))

    fake = FakeVLM(logprob)
    pair = LlavaCritic(fake).rank_answers(RED, "What colour?", ["blue", "red", "green"])
    assert fake.calls == [("score", 6)]
    assert (pair.chosen, pair.margins[0][1]) == (1, pytest.approx(0.8, abs=1e-6))
    assert pair.rewards[1] == pytest.approx(4 * 0.8, abs=1e-5)  # wins all 4 of its comparisons by 0.8
    assert pair.rejected == 0  # blue and green tie at -1.6; the earliest index is rejected
    always_first = FakeVLM(reply=lambda images, prompt: "The better image: first")
    biased = LlavaCritic(always_first, mode="generate").rank_images([RED, GREEN, BLUE], "a red circle")
    assert biased.rewards == [0.0, 0.0, 0.0] and biased.chosen is None  # position bias cancels


# ------------------------------------------------------------------------------- DSG questions


def _yes_fake(p_yes: dict[str, float | dict[str, float]]) -> FakeVLM:
    """P(yes) per yes/no question; for a multiple-choice question, P of each choice named (the
    others 0)."""

    def logprob(images, prompt, continuation):
        p = p_yes[prompt]
        if isinstance(p, dict):
            return _log(p.get(continuation, 0.0))
        return _log(p if continuation == P.YES else 1 - p)

    return FakeVLM(logprob)


def test_decomposition_and_dependency_zeroing_by_hand():
    fake = _yes_fake(
        {
            "Is there a circle?": 0.9,
            "Is there a red circle?": 0.2,  # fails ...
            "How many red circles are there?": {"2": 0.95, "3": 0.05},  # ... so this child counts 0
            "Is there a square?": 0.8,
            "Is there a blue square?": 0.7,
        }
    )
    verdict = VQACritic(fake).critique(RED, "two red circles and a blue square")
    assert fake.calls == [("score", 1), ("score", 4)]  # the count's digits, then yes/no
    assert verdict.score == pytest.approx((0.9 + 0.2 + 0.0 + 0.8 + 0.7) / 5)
    first, second = verdict.findings
    assert first.requirement == "exactly two red circles" and not first.passed and first.score == 0.0
    assert "depends on failed" in first.explanation
    assert second.passed and second.score == pytest.approx(0.7)
    assert verdict.passed is False and "exactly two red circles" in verdict.explanation
    kinds = [q["kind"] for q in verdict.details["questions"]]
    assert kinds == ["entity", "attribute", "count", "entity", "attribute"]


def test_relations_depend_on_both_objects_and_negation_expects_no():
    d = decompose("a circle left of a blue square and no triangles")
    texts = [q.text for q in d.questions]
    assert texts == [
        "Is there a circle?",
        "Is there a square?",
        "Is there a blue square?",
        "Is there a triangle?",
        "Is the circle left of the blue square?",
    ]
    assert d.questions[3].expected == (P.NO,) and d.questions[4].parents == (0, 2)
    # square missing -> the relation is zeroed even though the VLM said yes to it
    assert answer_scores(d, [0.9, 0.3, 0.9, 0.9, 0.99]) == pytest.approx([0.9, 0.3, 0.0, 0.9, 0.0])
    assert answer_scores(d, [0.9, 0.9, 0.9, 0.9, 0.99]) == pytest.approx([0.9, 0.9, 0.9, 0.9, 0.99])
    # "no triangles" is satisfied by the answer No: P(yes) 0.1 scores 0.9
    fake = _yes_fake({"Is there a circle?": 0.7, "Is there a triangle?": 0.1})
    absent = VQACritic(fake).critique(RED, "a circle and no triangles")
    assert [q["score"] for q in absent.details["questions"]] == pytest.approx([0.7, 0.9])
    assert absent.details["questions"][1]["expected"] == P.NO and absent.findings[1].passed


def test_counts_are_asked_how_many_and_scored_by_the_digits_they_need():
    d = decompose("exactly two red circles and at least three squares")
    counts = [q for q in d.questions if q.kind == "count"]
    assert [q.text for q in counts] == ["How many red circles are there?", "How many squares are there?"]
    assert counts[0].expected == ("2",) and counts[1].expected == tuple("3456789")
    assert [q.expected_text() for q in counts] == ["2", "3 or more"]
    seen = {"2": 0.1, "3": 0.6, "4": 0.3}  # the VLM's answer to both "how many" questions
    fake = _yes_fake(
        {
            "Is there a circle?": 0.9,
            "Is there a red circle?": 0.9,
            "How many red circles are there?": seen,
            "Is there a square?": 0.9,
            "How many squares are there?": seen,
        }
    )
    verdict = VQACritic(fake).critique(RED, "exactly two red circles and at least three squares")
    two, three = [q for q in verdict.details["questions"] if q["kind"] == "count"]
    assert two["p_expected"] == pytest.approx(0.1) and three["p_expected"] == pytest.approx(0.9)
    assert two["answers"]["3"] == pytest.approx(0.6) and sum(two["answers"].values()) == pytest.approx(1.0)
    assert [f.passed for f in verdict.findings] == [False, True]
    assert "How many red circles are there? P(2)=0.10" in verdict.findings[0].explanation
    assert "P(3 or more)=0.90" in verdict.findings[1].explanation


def test_prompts_outside_the_grammar_fall_back_to_vqascore():
    text = "a dog riding a skateboard"
    fake = _yes_fake({P.VQASCORE.format(text=text): 0.7, "Is there a circle?": 0.4})
    bad, good = VQACritic(fake).critique_many([RED, BLUE], [text, "a circle"])
    assert fake.calls == [("score", 2)]  # both prompts in one call
    assert bad.score == pytest.approx(0.7) and bad.details["fallback"] == "vqascore"
    assert "outside the world grammar" in bad.explanation and bad.findings[0].requirement == text
    assert good.score == pytest.approx(0.4) and "fallback" not in good.details
    assert vqascore(fake, [RED], [text]).tolist() == pytest.approx([0.7])


def test_grounding_puts_boxes_on_failed_findings():
    fake = _yes_fake({"Is there a circle?": 0.9, "Is there a red circle?": 0.1, "Is there a square?": 0.9})
    fake.reply = lambda images, prompt: "[10, 20, 30, 40], [50, 10, 60, 30]" if "red circle" in prompt else ""
    verdict = VQACritic(fake, ground=True).critique(RED, "a red circle and a square")
    assert verdict.findings[0].box == pytest.approx((0.1, 0.1, 0.6, 0.4))
    assert verdict.findings[1].box is None and fake.calls[-1] == ("chat", 1)


def test_relations_from_boxes_use_the_vlms_grounding_and_the_worlds_rule():
    fake = _yes_fake({"Is there a circle?": 0.9, "Is there a red circle?": 0.8, "Is there a square?": 0.7})
    where = {"red circle": "[10, 40, 20, 50]", "square": "[70, 40, 80, 50], [75, 10, 85, 20]"}
    fake.reply = lambda images, prompt: where[prompt[len("Find every ") : prompt.index(".")]]
    prompts = ["a red circle left of a square", "a red circle right of a square"]
    left, right = VQACritic(fake, relations="boxes").critique_many([RED, RED], prompts)
    # the relation is never asked: 3 questions per prompt are scored, 2 groups per prompt found
    assert fake.calls == [("score", 6), ("chat", 4)]
    assert [q["kind"] for q in left.details["questions"]][-1] == "relation"
    # both squares are right of the circle (the second one also above it)
    assert left.details["questions"][-1]["p_expected"] == 1.0 and left.findings[-1].passed
    assert left.details["questions"][-1]["answers"] is None  # judged, not asked
    assert left.details["questions"][-1]["boxes"][1] == [[0.7, 0.4, 0.8, 0.5], [0.75, 0.1, 0.85, 0.2]]
    assert right.details["questions"][-1]["p_expected"] == 0.0 and not right.findings[-1].passed
    # the relation's finding is placed where its objects were found ...
    assert right.findings[-1].box == pytest.approx((0.1, 0.1, 0.85, 0.5))
    # ... so localising failed findings does not ask about it again (the others pass here)
    fake.calls.clear()
    VQACritic(fake, relations="boxes", ground=True).critique(RED, prompts[1])
    assert fake.calls == [("score", 3), ("chat", 2)]
    # one pair of two holds (the second square is above the circle): the world wants every pair
    where["square"] = "[70, 40, 80, 50], [12, 0, 22, 10]"
    verdict = VQACritic(fake, relations="boxes").critique(RED, prompts[0])
    assert verdict.details["questions"][-1]["p_expected"] == 0.0 and not verdict.findings[-1].passed
    where["square"] = "None"  # a group with no box: the relation cannot hold
    verdict = VQACritic(fake, relations="boxes").critique(RED, prompts[0])
    assert verdict.details["questions"][-1]["p_expected"] == 0.0
    with pytest.raises(ValueError, match="relations must be one of"):
        VQACritic(fake, relations="guess")


def test_sizes_from_boxes_find_the_object_without_its_size_and_apply_the_worlds_rule():
    fake = _yes_fake({"Is there a circle?": 0.9, "Is there a square?": 0.9, "Is there a blue square?": 0.9})
    # a red circle 0.30 wide (large by the world's rule, side >= 0.23) and one 0.15 wide (small)
    where = {"red circle": "[10, 10, 40, 40], [60, 60, 75, 75]", "square": "[5, 60, 20, 75]"}
    fake.reply = lambda images, prompt: where[prompt[len("Find every ") : prompt.index(".")]]
    prompts = ["a small red circle", "a large red circle", "a small square and a blue square"]
    small, large, squares = VQACritic(fake, sizes="boxes").critique_many([RED] * 3, prompts)
    # the sized questions are never asked: the unsized objects are found, once per image
    assert fake.calls == [("score", 5), ("chat", 3)]
    assert small.details["questions"][1]["p_expected"] == 1.0 and small.passed
    assert small.details["questions"][1]["answers"] is None
    assert small.details["questions"][1]["boxes"] == [[[0.1, 0.1, 0.4, 0.4], [0.6, 0.6, 0.75, 0.75]]]
    assert large.details["questions"][1]["p_expected"] == 1.0
    # the only square is small; the blue square (no size) is still asked
    assert [q["kind"] for q in squares.details["questions"]] == ["entity", "attribute", "entity", "attribute"]
    assert squares.findings[0].passed and squares.details["questions"][3]["answers"] is not None
    where["square"] = "[5, 5, 45, 45]"  # now large: "a small square" fails, placed where it was found
    squares = VQACritic(fake, sizes="boxes").critique(RED, prompts[2])
    assert not squares.findings[0].passed and squares.findings[0].box == pytest.approx(
        (0.05, 0.05, 0.45, 0.45)
    )
    assert "Is there a small square? P(Yes)=0.00 (from the VLM's boxes)" in squares.findings[0].explanation
    where["red circle"] = "None"
    assert (
        VQACritic(fake, sizes="boxes").critique(RED, prompts[0]).details["questions"][1]["p_expected"] == 0.0
    )
    with pytest.raises(ValueError, match="sizes must be one of"):
        VQACritic(fake, sizes="guess")


# ----------------------------------------------------------------------- tiny LLaVA: plumbing


@pytest.fixture(scope="module")
def tiny_vlm(tmp_path_factory):
    from selfcorrect.vision.testing import build_tiny_vlm
    from selfcorrect.vision.vlm import VLM

    return VLM.from_pretrained(build_tiny_vlm("llava", tmp_path_factory.mktemp("llava")))


def test_llava_critic_logprob_on_a_real_model_class(tiny_vlm):
    critic = LlavaCritic(tiny_vlm)
    assert isinstance(critic, ImageCritic) and isinstance(critic, PairwiseCritic)
    verdicts = critic.critique_many([RED, BLUE, RED], ["a red circle", "a blue square", "two crosses"])
    assert len(verdicts) == 3
    for v in verdicts:
        assert 0.0 <= v.score <= 1.0 and v.passed == (v.score >= critic.threshold)
        assert sum(v.details["distribution"].values()) == pytest.approx(1.0, abs=1e-5)
    answer = critic.critique_answer(GREEN, "What colour is it?", "green")
    assert 0.0 <= answer.score <= 1.0
    pair = critic.compare(RED, BLUE, "a red circle")
    assert pair.preference in ("first", "second", "tie") and isinstance(pair.both_orders_agree, bool)
    assert sum(pair.probabilities.values()) == pytest.approx(1.0, abs=1e-5)
    swapped = critic.compare(BLUE, RED, "a red circle")  # same two orders, mirrored
    assert swapped.probabilities["first"] == pytest.approx(pair.probabilities["second"], abs=1e-5)
    ranked = critic.rank_answers(RED, "What colour?", ["red", "blue", "green"])
    assert len(ranked.rewards) == 3 and sum(ranked.rewards) == pytest.approx(0.0, abs=1e-5)


def test_llava_critic_generate_mode_turns_garbage_into_unparsed(tiny_vlm):
    critic = LlavaCritic(tiny_vlm, mode="generate", max_new_tokens=12)
    v = critic.critique(RED, "a red circle")
    assert v.unparsed and v.score is None and v.passed is None  # a random model writes no verdict
    assert isinstance(v.raw, str)
    pair = critic.compare_answers(RED, "What colour?", "red", "blue")
    assert pair.unparsed and pair.preference is None and len(pair.raw) == 2


def test_vqa_critic_on_a_real_model_class(tiny_vlm):
    critic = VQACritic(tiny_vlm)
    prompts = ["a red circle left of two blue squares", "no crosses", "a purple elephant"]
    verdicts = critic.critique_many([RED, RED, BLUE], prompts)
    assert [len(v.findings) for v in verdicts] == [3, 1, 1]
    assert [len(v.details["questions"]) for v in verdicts] == [6, 1, 1]
    for v in verdicts:
        assert 0.0 <= v.score <= 1.0 and all(0.0 <= f.score <= 1.0 for f in v.findings)
    assert verdicts[2].details["fallback"] == "vqascore"
    # relations from boxes: the same questions, the relation judged from generated boxes
    boxed = VQACritic(tiny_vlm, relations="boxes").critique_many([RED, RED, BLUE], prompts)
    before, after = verdicts[0].details["questions"], boxed[0].details["questions"]
    assert [q["kind"] for q in after] == [q["kind"] for q in before]
    for q, r in zip(before, after):
        assert ("boxes" in r) == (q["kind"] == "relation")
        if q["kind"] != "relation":
            assert r["p_expected"] == pytest.approx(q["p_expected"], abs=1e-5)
    p = vqascore(tiny_vlm, [RED, BLUE], ["a red circle", "a red circle"])
    assert p.shape == (2,) and bool(((p > 0) & (p < 1)).all())
    assert verdicts[2].score == pytest.approx(
        float(vqascore(tiny_vlm, [BLUE], ["a purple elephant"])[0]), abs=1e-5
    )


# --------------------------------------------------------------------------------------- CLIP


@pytest.fixture(scope="module")
def tiny_clip():
    import open_clip

    from selfcorrect.train import world_clip

    cfg = world_clip.model_config(world_clip.PROFILES["tiny"])
    torch.manual_seed(0)
    model = open_clip.CLIP(**cfg).eval()
    preprocess = open_clip.image_transform(cfg["vision_cfg"]["image_size"], is_train=False)
    tokenizer = open_clip.SimpleTokenizer(context_length=cfg["text_cfg"]["context_length"])
    return model, preprocess, tokenizer


def test_clip_critic_is_clipscore_normalised(tiny_clip):
    from selfcorrect.vision.clip import clip_scores

    critic = CRITICS["clip"](clip=tiny_clip, threshold=0.1)
    images, texts = [RED, BLUE], ["a red circle", "a blue square"]
    cos = torch.diagonal(clip_scores(*tiny_clip, images, texts))
    verdicts = critic.critique_many(images, texts)
    for v, c in zip(verdicts, cos.tolist()):
        assert v.score == pytest.approx(max(c, 0.0), abs=1e-6)
        assert v.details["clipscore"] == pytest.approx(float(clipscore(c)), abs=1e-6)
        assert v.passed == (v.score >= 0.1)
    assert float(clipscore(-0.3)) == 0.0 and float(clipscore(0.4)) == pytest.approx(1.0)
    assert ClipCritic(*tiny_clip).critique(RED, "x").passed is None  # no threshold, not the world's grammar
    pair = critic.compare(RED, BLUE, "a red circle")
    c_red, c_blue = critic.cosines([RED, BLUE], ["a red circle"] * 2).tolist()
    assert pair.preference == ("first" if c_red > c_blue else "second") and pair.both_orders_agree


def test_clip_critic_fails_an_image_when_a_one_edit_variant_fits_it_better(tiny_clip):
    prompt = "a red circle left of a blue square"
    critic = ClipCritic(*tiny_clip, tolerance=0.01)
    v = critic.critique(RED, prompt)
    variants = v.details["variants"]
    assert {x["text"] for x in variants} == {x.text for x in one_edit_variants(prompt)}
    texts = [x["text"] for x in variants]
    cos = critic.cosines([RED] * (len(texts) + 1), [prompt, *texts]).tolist()
    assert v.details["cosine"] == pytest.approx(cos[0], abs=1e-5)
    assert [x["cosine"] for x in variants] == pytest.approx(cos[1:], abs=1e-5)
    assert [x["cosine"] for x in variants] == sorted((x["cosine"] for x in variants), reverse=True)
    assert v.passed == (max(cos[1:]) - cos[0] <= 0.01)
    # One finding per requirement: it fails when a variant that edits it wins by more than 0.01.
    described = ["at least one red circle", "at least one blue square", "red circle left of blue square"]
    assert [f.requirement for f in v.findings] == described and v.passed == all(f.passed for f in v.findings)
    for r, f in enumerate(v.findings):
        edits_r = [c for x, c in zip(variants, cos[1:]) if r in x["requirements"]]
        assert edits_r and f.passed == (max(edits_r) - cos[0] <= 0.01) and 0.0 <= f.score <= 1.0
        assert (f.score > 0.5) == (cos[0] > max(edits_r))
    better = [t for t, c in zip(texts, cos[1:]) if c - cos[0] > 0.01]
    assert (f"best {better[0]!r}" in v.explanation) if better else ("no one-edit variant" in v.explanation)
    assert ClipCritic(*tiny_clip, tolerance=2.0).critique(RED, prompt).passed  # cosines differ by < 2
    assert ClipCritic(*tiny_clip, threshold=0.0).critique(RED, prompt).passed  # a threshold decides
    off = ClipCritic(*tiny_clip, contrast=False).critique(RED, prompt)
    assert off.passed is None and off.details["variants"] == [] and off.score == v.score
    again = critic.critique_many([BLUE, RED], ["a blue square", prompt])[1]  # cached text features
    assert [x["text"] for x in again.details["variants"]] == texts and again.passed == v.passed
    assert [x["cosine"] for x in again.details["variants"]] == pytest.approx(cos[1:], abs=1e-5)
    with pytest.raises(ValueError, match="tolerance"):
        ClipCritic(*tiny_clip, tolerance=-0.1)


def test_registry_builders_take_injected_models():
    fake = FakeVLM()
    assert set(CRITICS) == {"llava_critic", "vqa", "clip", "lookback", "tldr", "detection"}
    assert isinstance(CRITICS["vqa"](vlm=fake), VQACritic) and CRITICS["vqa"](vlm=fake).relations == "ask"
    fake.name = "world"  # the world VLM finds objects but does not answer relation questions
    assert CRITICS["vqa"](vlm=fake).relations == "boxes"
    assert CRITICS["vqa"](vlm=fake, relations="ask").relations == "ask"
    critic = CRITICS["llava_critic"](vlm=fake, mode="generate", threshold=0.5)
    assert isinstance(critic, LlavaCritic) and critic.mode == "generate" and critic.threshold == 0.5
    assert "pairwise" in critic.kinds and "image" in VQACritic(fake).kinds
    with pytest.raises(ValueError):
        LlavaCritic(fake, mode="sample")
