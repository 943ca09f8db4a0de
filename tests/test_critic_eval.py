"""`selfcorrect eval critics`: metrics by hand, images and chains with known truth, the report, the CLI.

The metric functions are checked against numbers worked out by hand. The whole evaluation runs
with fake critics whose answers are known (one reads the image with the oracle, so it must agree
with the truth; one always says the same thing; one raises on some items), and the command end
to end with a tiny random LLaVA and a tiny CLIP, whose numbers are meaningless but must be in
range and laid out as documented.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from types import SimpleNamespace

import pytest

from selfcorrect.cli import main
from selfcorrect.critics.verdicts import ImageVerdict, PairwiseVerdict, StepVerdict, TokenVerdict
from selfcorrect.world import critic_eval as ce
from selfcorrect.world.grammar import parse_prompt
from selfcorrect.world.render import render
from selfcorrect.world.requirements import CATEGORIES
from selfcorrect.world.sampling import random_scene, sample_scene

# ---------------------------------------------------------------------------------------------
# Metrics by hand


def test_accuracy_and_majority_by_hand():
    # decided: (T, T) right, (F, T) wrong, (F, F) right -> 2 / 3; one undecided
    assert ce.accuracy([True, False, True, False], [True, True, None, False]) == {
        "accuracy": 2 / 3,
        "n": 3,
        "undecided": 1,
    }
    assert ce.accuracy([True], [None]) == {"accuracy": None, "n": 0, "undecided": 1}
    assert ce.majority_rate([True, True, False]) == 2 / 3 and ce.majority_rate([]) is None
    with pytest.raises(ValueError):
        ce.accuracy([True], [True, False])


def test_spearman_by_hand():
    # no ties: d = (0, 1, 1, 0), rho = 1 - 6 * 2 / (4 * 15) = 0.8
    assert math.isclose(ce.spearman([1, 2, 3, 4], [1, 3, 2, 4]), 0.8)
    # ties get mean ranks: y ranks (1, 2, 3.5, 5, 3.5); Pearson of the ranks = 8 / sqrt(10 * 9.5)
    assert math.isclose(ce.spearman([1, 2, 3, 4, 5], [5, 6, 7, 8, 7]), 8 / math.sqrt(95))
    assert math.isclose(ce.spearman([1, 2, 3], [30, 20, 10]), -1.0)
    assert ce.spearman([1, 2, 3], [5, 5, 5]) is None and ce.spearman([1], [2]) is None


def test_precision_recall_f1_by_hand():
    # tp 1 (item 0), fp 1 (item 2), fn 2 (items 1, 4): P 1/2, R 1/3, F1 = 2 PR / (P + R) = 0.4
    m = ce.precision_recall_f1([True, True, False, False, True], [True, False, True, False, False])
    assert (m["tp"], m["fp"], m["fn"], m["positives"], m["n"]) == (1, 1, 2, 3, 5)
    assert m["precision"] == 0.5 and math.isclose(m["recall"], 1 / 3) and math.isclose(m["f1"], 0.4)
    none = ce.precision_recall_f1([True, False], [False, False])  # nothing flagged: all 0, no error
    assert none["precision"] == none["recall"] == none["f1"] == 0.0
    assert ce.precision_recall_f1([True, False], [True, False])["f1"] == 1.0


def test_pairwise_accuracy_and_preferences_by_hand():
    m = ce.pairwise_accuracy(["first", "second", "first", "second"], ["first", "tie", None, "second"])
    assert m == {"accuracy": 2 / 3, "n": 3, "ties": 1, "undecided": 1}
    assert ce.preference_of(0.7, 0.2) == "first" and ce.preference_of(0.1, 0.2) == "second"
    assert ce.preference_of(0.5, 0.5) == "tie" and ce.preference_of(None, 0.5) is None
    with pytest.raises(ValueError):
        ce.pairwise_accuracy(["tie"], ["first"])


def test_auroc_by_hand():
    # positives 0.9, 0.4 vs negatives 0.1, 0.4: 1 + 1 + 1 + 0.5 (tie) over 4 pairs
    assert ce.auroc([True, False, True, False], [0.9, 0.1, 0.4, 0.4]) == 0.875
    assert ce.auroc([True, False], [0.2, 0.8]) == 0.0 and ce.auroc([True, True], [0.1, 0.2]) is None


def test_mode_agreement_by_hand():
    def v(score, passed):
        return ImageVerdict(score=score, passed=passed)

    fast = [v(0.8, True), v(0.5, False), v(0.4, False), None]
    slow = [v(0.7, True), v(0.8, True), ImageVerdict.unparsable("?"), v(0.1, False)]
    # judged by both: items 0 and 1; gaps 0.1 and 0.3; pass/fail equal on item 0 only
    m = ce.mode_agreement(fast, slow)
    assert m["n"] == 2 and math.isclose(m["score_gap"], 0.2) and m["pass_agreement"] == 0.5
    assert ce.mode_agreement([None], [None]) == {"n": 0, "score_gap": None, "pass_agreement": None}


def test_targets_are_the_issues_and_checked_on_the_right_side():
    assert (
        ce.TARGETS["pairwise_accuracy"]["value"] == 0.85 and ce.TARGETS["pass_fail_accuracy"]["value"] == 0.85
    )
    assert ce.TARGETS["lookback_f1_gain"]["value"] == 0.05 and ce.TARGETS["tldr_token_auroc"]["value"] == 0.90
    assert ce.TARGETS["logprob_speedup"]["value"] == 10 and ce.TARGETS["mode_score_gap"]["value"] == 0.02
    assert ce.meets("pairwise_accuracy", 0.85) and not ce.meets("pairwise_accuracy", 0.84)
    assert ce.meets("mode_score_gap", 0.01) and not ce.meets("mode_score_gap", 0.03)
    assert ce.meets("logprob_speedup", None) is None


def test_token_labels_follow_the_edit():
    truth, negative = "a photo of two red circles", "a photo of two blue circles"
    (span,) = ce.edit_spans(truth, negative)
    assert negative[span[0] : span[1]] == "blue"
    tokens = ["a", " photo", " of", " two", " bl", "ue", " circles"]
    assert ce.token_labels(tokens, negative, [span]) == [False] * 4 + [True, True, False]
    assert ce.token_labels(["a", " cat"], negative, [span]) is None  # cannot be laid on the text
    assert ce.edit_spans(truth, truth) == []


# ---------------------------------------------------------------------------------------------
# Images, pairs, chains


def test_prompts_spread_over_categories_and_renders_pass_and_fail():
    prompts = ce.select_prompts("test", 9)
    assert [p.prompt for p in prompts] == [p.prompt for p in ce.select_prompts("test", 9)]
    assert {p.category for p in prompts} == set(CATEGORIES) and all(p.split == "test" for p in prompts)
    assert ce.select_prompts("val", 3) != ce.select_prompts("test", 3)
    images, failures = ce.rendered_images(prompts[:4], "test")
    assert not failures
    for p in prompts[:4]:
        mine = [im for im in images if im.prompt == p.prompt]
        assert [im.kind for im in mine][0] == "positive" and mine[0].passed and mine[0].pass_rate == 1.0
        for im in mine[1:]:
            assert im.kind == "negative" and not im.passed and im.pass_rate < 1.0 and im.failures
    assert any(im.kind == "negative" for im in images)


def _image(source, prompt, rate, seed=0):
    return ce.JudgedImage(source, prompt, "colors", seed, None, rate == 1.0, rate)


def test_pairs_need_one_prompt_one_source_and_different_pass_rates():
    images = [
        _image("render", "a", 1.0),
        _image("render", "a", 0.5),
        _image("render", "a", 0.5, 1),  # same rate as the one before: no pair between them
        _image("generated", "a", 0.0),  # another source: no pair with the renders
        _image("render", "b", 0.0),
    ]
    pairs = ce.image_pairs(images)
    assert sorted(tuple(sorted((i, j))) for i, j, _ in pairs) == [(0, 1), (0, 2)]
    for i, j, truth in pairs:
        assert truth == ("first" if images[i].pass_rate > images[j].pass_rate else "second")
    many = [_image("render", str(k), 1.0) for k in range(40)] + [
        _image("render", str(k), 0.0) for k in range(40)
    ]
    truths = [t for _, _, t in ce.image_pairs(many)]
    assert 10 < truths.count("first") < 30  # the order is shuffled: "always first" scores about half


def test_reasoning_chains_are_seeded_and_labelled():
    chains = ce.reasoning_chains("test", 12)
    again = ce.reasoning_chains("test", 12)
    assert [(c.question, c.steps, c.wrong_steps) for c in chains] == [
        (c.question, c.steps, c.wrong_steps) for c in again
    ]
    assert all(len(c.steps) == len(c.wrong_steps) and sum(c.wrong_steps) <= 1 for c in chains)
    assert 0 < sum(any(c.wrong_steps) for c in chains) < 12  # some chains have a wrong step, not all
    with pytest.raises(ValueError, match="unknown split"):
        ce.reasoning_chains("heldout", 1)


# ---------------------------------------------------------------------------------------------
# The whole evaluation with fake critics


class OracleCritic:
    """Reads the image with the oracle (allowed in tests): agrees with the truth by construction."""

    kinds = frozenset({"image", "pairwise"})
    threshold = 1.0

    def critique(self, image, prompt):
        from selfcorrect.world.oracle import check

        results = check(image, parse_prompt(prompt)).results
        rate = sum(r.passed for r in results) / len(results)
        return ImageVerdict(score=rate, passed=rate == 1.0, critic="oracle")

    def critique_many(self, images, prompts):
        return [self.critique(i, p) for i, p in zip(images, prompts)]

    def compare(self, a, b, prompt):
        pref = ce.preference_of(self.critique(a, prompt).score, self.critique(b, prompt).score)
        return PairwiseVerdict(preference=pref, confidence=1.0, both_orders_agree=True)


class ConstantCritic:
    """Always 0.5, always fail; raises on prompts containing ``bad`` (a broken item)."""

    kinds = frozenset({"image"})
    threshold = 0.9

    def __init__(self, bad: str = "\0"):
        self.bad = bad

    def critique(self, image, prompt):
        if self.bad in prompt:
            raise RuntimeError("broken item")
        return ImageVerdict(score=0.5, passed=False)

    def critique_many(self, images, prompts):
        return [self.critique(i, p) for i, p in zip(images, prompts)]


class TruthStepCritic:
    """LookBack knows the truth (looked up by the steps); the plain critique says all is well."""

    def __init__(self, chains):
        self.truth = {tuple(c.steps): c for c in chains}

    def critique_steps(self, image, question, steps, answer):
        c = self.truth[tuple(steps)]
        if c.index == 0:
            return StepVerdict([None] * len(steps), [""] * len(steps), None, unparsed=True)
        return StepVerdict([not w for w in c.wrong_steps], [""] * len(steps), not c.wrong_answer)

    def critique_plain(self, image, question, steps, answer):
        return StepVerdict([True] * len(steps), [""] * len(steps), True)

    def lookback(self, image, question, steps, answer):
        """The trace: the verdict, the critique prompt (here the steps, one per line) and evidence
        that contradicts every first step (an answer with no word in common with it)."""
        return SimpleNamespace(
            verdict=self.critique_steps(image, question, steps, answer),
            prompt="\n".join(steps),
            questions=[["What animal is it?"]] + [[] for _ in steps[1:]],
            answers=[["zebra"]] + [[] for _ in steps[1:]],
        )


class ProbabilityStepCritic:
    """Log-prob mode: LookBack gives wrong steps P(correct) 0.2 and right ones 0.8; the plain
    critique 0.5 everywhere."""

    def __init__(self, chains):
        self.truth = {tuple(c.steps): c for c in chains}

    def critique_steps(self, image, question, steps, answer):
        p = [0.2 if w else 0.8 for w in self.truth[tuple(steps)].wrong_steps]
        return StepVerdict([x >= 0.5 for x in p], [""] * len(steps), True, step_probabilities=p)

    def critique_plain(self, image, question, steps, answer):
        return StepVerdict(
            [True] * len(steps), [""] * len(steps), True, step_probabilities=[0.5] * len(steps)
        )

    name = "lookback"
    judged = 0

    def judge(self, image, prompt, n_steps, critic):
        """LookBack's judgement of the prompt :meth:`TruthStepCritic.lookback` filled in."""
        self.judged += 1
        steps = prompt.split("\n")
        assert len(steps) == n_steps
        return self.critique_steps(image, None, steps, None)


class TableTldr:
    """Word tokens; the words of each caption's edit get reward 0.1, the others 0.9."""

    def __init__(self, captions):
        self.spans = {c.text: c.bad_spans for c in captions}

    def reward_tokens(self, image, prompt, response):
        tokens, rewards, at = [], [], 0
        for k, word in enumerate(response.split(" ")):
            start = response.index(word, at)
            at = start + len(word)
            bad = any(start < b and a < at for a, b in self.spans[response])
            tokens.append(word if k == 0 else " " + word)
            rewards.append(0.1 if bad else 0.9)
        return TokenVerdict(tokens, rewards)


def _generate(prompts, seeds):
    """Seed 0 draws a scene of the prompt, seed 1 a random scene (which usually fails it)."""
    return [
        render(sample_scene(parse_prompt(p), 7) if s == 0 else random_scene(100 + len(p)), 64)
        for p, s in zip(prompts, seeds)
    ]


@pytest.fixture(scope="module")
def faked():
    chains = ce.reasoning_chains("test", 8)
    captions = ce.tldr_captions("test", 8)
    prompts = ce.select_prompts("test", 7)
    logprob = ProbabilityStepCritic(chains)
    result = ce.run(
        "test",
        7,
        critics={"oracle": OracleCritic(), "constant": ConstantCritic(bad=prompts[2].prompt)},
        compare=("oracle", "missing"),
        step_critic=TruthStepCritic(chains),
        step_logprob=logprob,
        tldr=TableTldr(captions),
        generate_fn=_generate,
        seeds=2,
        chains=8,
        progress=False,
    )
    assert logprob.judged == 8 + 1  # LookBack's evidence was judged, not gathered again (+1: warm-up)
    return result, chains


def test_run_agrees_with_an_oracle_critic(faked):
    result, _ = faked
    images = result["records"]["images"]
    assert result["images"]["generated"]["images"] == 14 and result["prompts"] == 7
    assert result["images"]["render"]["images"] == sum(r["source"] == "render" for r in images) >= 8
    assert result["images"]["render"]["pairs"] >= 1 and result["images"]["generated"]["pairs"] >= 1
    oracle = result["critics"]["oracle"]
    assert oracle["sources"]["generated"]["accuracy"] == 1.0  # the truth of generated images is the oracle's
    assert oracle["sources"]["all"]["accuracy"] >= 0.9 and oracle["sources"]["all"]["spearman"] > 0.8
    assert oracle["images_per_second"] > 0 and oracle["unparsed"] == oracle["failed"] == 0
    assert result["pairwise"]["oracle/compare"]["sources"]["generated"]["accuracy"] == 1.0
    assert result["pairwise"]["oracle/score"]["sources"]["all"]["accuracy"] >= 0.9
    assert "missing/compare" not in result["pairwise"]
    margin = result["pairwise"]["oracle/compare:margin"]["sources"]["all"]  # no probabilities: no verdict
    assert margin["undecided"] == margin["n"] + margin["undecided"] > 0


def test_margin_preference_leaves_the_tie_out():
    def verdict(first, second, tie, unparsed=False):
        p = {"first": first, "second": second, "tie": tie}
        return PairwiseVerdict(
            preference=None if unparsed else max(p, key=p.get),
            confidence=None if unparsed else max(p.values()),
            both_orders_agree=None,
            probabilities=None if unparsed else p,
            unparsed=unparsed,
        )

    assert ce.margin_preference(verdict(0.1, 0.3, 0.6)) == "second"  # "tie" is its verdict
    assert ce.margin_preference(verdict(0.35, 0.05, 0.6)) == "first"
    assert ce.margin_preference(verdict(0.2, 0.2, 0.6)) == "tie"
    assert ce.margin_preference(verdict(0, 0, 0, unparsed=True)) is None


def test_run_goes_on_past_a_bad_item(faked):
    result, _ = faked
    constant = result["critics"]["constant"]
    broken = [r for r in result["records"]["images"] if r["critics"]["constant"] is None]
    assert constant["failed"] == len(broken) > 0 and len(result["failures"]) == len(broken)
    assert all(f["stage"] == "constant" and "broken item" in f["error"] for f in result["failures"])
    judged = [r for r in result["records"]["images"] if r["critics"]["constant"] is not None]
    share_failing = sum(not r["passed"] for r in judged) / len(judged)
    assert math.isclose(constant["sources"]["all"]["accuracy"], share_failing)  # "always fail"
    assert constant["sources"]["all"]["spearman"] is None  # constant scores: undefined
    assert result["pairwise"]["constant/score"]["sources"]["all"]["accuracy"] == 0.0  # all ties


def test_run_lookback_vs_plain_and_tldr(faked):
    result, chains = faked
    steps = result["steps"]
    wrong = [w for c in chains for w in c.wrong_steps]
    assert steps["chains"] == 8 and steps["wrong_steps"] == sum(wrong) > 0
    # chain 0 is unparsed for LookBack: its wrong steps (if any) are missed
    missed = sum(chains[0].wrong_steps)
    assert steps["lookback"]["unparsed"] == 1 and steps["lookback"]["steps"]["fn"] == missed
    assert steps["lookback"]["steps"]["precision"] == 1.0 and steps["plain"]["steps"]["f1"] == 0.0
    assert math.isclose(steps["f1_gain"], steps["lookback"]["steps"]["f1"])
    # lookback:checked: LookBack's verdicts and every first step (the evidence contradicts it);
    # the unparsed chain 0 stays unparsed
    flagged = [i == 0 or w for c in chains[1:] for i, w in enumerate(c.wrong_steps)]
    expected = ce.precision_recall_f1(wrong, [False] * len(chains[0].steps) + flagged)
    assert steps["lookback:checked"]["steps"] == expected and steps["lookback:checked"]["unparsed"] == 1
    assert steps["lookback:checked"]["failed"] == 0 and expected["fp"] > 0
    assert math.isclose(steps["checked_f1_gain"], expected["f1"])
    assert steps["lookback:checked"]["seconds"] >= steps["lookback"]["seconds"]
    assert result["records"]["chains"][1]["lookback:checked"]["steps"][0] is False
    # log-prob mode: the threshold-free step AUROC of 1 - P(correct); none without probabilities
    assert steps["lookback"]["step_auroc"] is None and steps["plain"]["step_auroc"] is None
    assert steps["lookback:logprob"]["step_auroc"] == 1.0 and steps["plain:logprob"]["step_auroc"] == 0.5
    assert steps["auroc_gain"] == 0.5 and steps["lookback:logprob"]["steps"]["f1"] == 1.0
    logged = result["records"]["chains"][1]["lookback:logprob"]["step_probabilities"]
    assert logged == [0.2 if w else 0.8 for w in chains[1].wrong_steps]
    tldr = result["tldr"]
    assert tldr["available"] and tldr["token_auroc"] == 1.0 and tldr["response_accuracy"] == 1.0
    assert tldr["bad_tokens"] > 0 and tldr["unaligned"] == 0
    # per edit kind: every negative counted once, under its kind; a perfect critic catches all
    from selfcorrect.world.negatives import NEGATIVE_KINDS

    negatives = [c.kind for c in ce.tldr_captions("test", 8) if not c.correct]
    assert negatives and set(negatives) <= set(NEGATIVE_KINDS)
    by_kind = tldr["by_kind"]
    assert {kind: k["captions"] for kind, k in by_kind.items()} == Counter(negatives)
    assert all(k["caught"] == 1.0 and k["token_auroc"] in (1.0, None) for k in by_kind.values())
    met = {(c["target"], c["subject"]): c["met"] for c in result["checks"]}
    assert met["tldr_token_auroc", "tldr"] is True and met["logprob_speedup", "llava_critic"] is None


def test_report_is_json_ready_and_shows_targets(faked):
    result, _ = faked
    json.dumps(result)
    md = ce.markdown_report(result)
    for text in (
        "**Pass/fail vs the oracle**",
        "| oracle | all (",
        "**Pairwise**",
        "≥ 0.85",
        "LookBack step F1",
        "| lookback:logprob | 1.00 | 1.00 | 1.00 | 1.00 |",
        "LookBack step AUROC − plain step AUROC = +0.50",
        "With its evidence also read by rule (`lookback:checked`, not VISCO's method): ",
        "| lookback:checked | chains (lookback, then the rule) |",
        "| edit | negatives | caught | token AUROC |",
    ):
        assert text in md
    assert "needs both LLaVA-Critic modes" not in md and "token AUROC ≥ 0.9" in md
    assert "\\|log-prob score - generate score\\|" in md  # a | inside a cell is escaped


def test_load_tldr_reports_why_it_is_missing(monkeypatch):
    from types import SimpleNamespace

    from selfcorrect.critics import CRITICS
    from selfcorrect.vision.vlm import ModelNotFoundError

    def no_weights(**options):
        raise ModelNotFoundError("no TLDR head at selfcorrect/weights/tldr-head")

    monkeypatch.setitem(CRITICS, "tldr", no_weights)
    critic, reason = ce.load_tldr()
    assert critic is None and "cannot be built" in reason and "no TLDR head" in reason
    built = SimpleNamespace(reward_tokens=print)
    monkeypatch.setitem(CRITICS, "tldr", lambda **options: built)
    assert ce.load_tldr() == (built, None)
    result = ce.run("test", 1, seeds=0, chains=0, tldr_note="no head", progress=False)
    assert result["tldr"] == {"available": False, "reason": "no head"}
    assert result["steps"] == {"skipped": "no step critic given"}


# ---------------------------------------------------------------------------------------------
# The command


def run_cli(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_help_and_bad_input(capsys):
    with pytest.raises(SystemExit) as e:
        main(["eval", "critics", "--help"])
    assert e.value.code == 0 and "--chains" in capsys.readouterr().out
    code, _, err = run_cli(capsys, "eval", "critics", "--split", "heldout")
    assert code == 2 and "unknown split" in err and "Traceback" not in err
    assert run_cli(capsys, "eval", "critics", "--limit", "0")[0] == 2
    assert run_cli(capsys, "eval", "critics", "--seeds", "-1")[0] == 2
    code, _, err = run_cli(capsys, "eval", "critics", "--critics", "vqa,bogus")
    assert code == 2 and "'bogus'" in err


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    import open_clip

    from selfcorrect.train.world_clip import PROFILES, model_config
    from selfcorrect.vision.clip import save_world_clip

    cfg = model_config(PROFILES["tiny"])
    return save_world_clip(open_clip.CLIP(**cfg), cfg, tmp_path_factory.mktemp("clip") / "world-clip")


@pytest.fixture
def one_thread():
    """Tiny models run fastest on one thread (see tests/test_vlm_eval.py)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_cli_end_to_end_with_a_tiny_llava(tmp_path, capsys, tiny_clip, one_thread):
    from selfcorrect.vision.testing import build_tiny_vlm

    model = build_tiny_vlm("llava", tmp_path / "llava")
    out_json = tmp_path / "results" / "critics.json"
    code, out, _ = run_cli(
        capsys,
        *("eval", "critics", "--vlm", str(model), "--clip", str(tiny_clip), "--limit", "2", "--seeds", "1"),
        *("--chains", "2", "--captions", "4", "--max-new-tokens", "8", "--batch-size", "4"),
        *("--json", str(out_json)),
    )
    assert code == 0 and "wrote" in out
    result = json.loads(out_json.read_text())
    assert set(result["critics"]) == {
        "llava_critic",
        "llava_critic:generate",
        "vqa",
        "vqa:boxes",
        "clip",
        "detection",
    }
    assert result["images"]["generated"]["images"] == 2 and result["images"]["render"]["images"] >= 2
    for c in result["critics"].values():
        for s in c["sources"].values():
            assert s["accuracy"] is None or 0.0 <= s["accuracy"] <= 1.0
            assert s["spearman"] is None or -1.0 <= s["spearman"] <= 1.0
        assert c["images_per_second"] > 0
    clip = result["critics"]["clip"]["sources"]["all"]  # contrastive pass/fail decides every prompt
    assert clip["decided"] == clip["images"] and clip["accuracy"] is not None
    # a random model's 8 tokens are no verdict: unparsed, counted, never a score of 0
    generate = result["critics"]["llava_critic:generate"]
    assert (
        generate["unparsed"] + generate["sources"]["all"]["decided"] == generate["sources"]["all"]["images"]
    )
    assert (
        result["llava_modes"]["speedup"] > 0
        and result["llava_modes"]["generate_unparsed"] == generate["unparsed"]
    )
    assert result["steps"]["chains"] == 2 and 0.0 <= result["steps"]["lookback"]["steps"]["f1"] <= 1.0
    for record in result["records"]["chains"]:  # judged with probabilities, or a counted failure
        for name in ("lookback:logprob", "plain:logprob"):
            judged = record[name]
            assert judged is None or len(judged["step_probabilities"]) == len(record["steps"])
    for name in ("lookback:logprob", "plain:logprob"):
        failed = [f for f in result["failures"] if f["stage"] == name]
        assert (
            result["steps"][name]["failed"]
            == len(failed)
            == sum(r[name] is None for r in result["records"]["chains"])
        )
    assert (
        result["tldr"]["available"] in (True, False)
        and ("reason" in result["tldr"]) != result["tldr"]["available"]
    )
    assert not result["tldr"]["available"] or result["tldr"]["captions"] == 4  # --captions, not --chains
    assert result["command"].startswith("selfcorrect eval critics") and result["model"]["device"] == "cpu"
    assert result["model"]["t2i"]["preset"] == "world" and result["machine"]["torch_threads"] >= 1
    md = out_json.with_suffix(".md").read_text()
    assert md.startswith("# Critics vs the oracle (test split)") and "selfcorrect eval critics" in md
    assert "**Targets**" in md and "≥ 0.85" in md
