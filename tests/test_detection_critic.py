"""The GenEval-style detection critic: findings from detections, scores, pass/fail, pairwise."""

import pytest
from PIL import Image

from selfcorrect.critics import CRITICS, ImageCritic, PairwiseCritic
from selfcorrect.critics.detection import DetectionCritic
from selfcorrect.errors import PromptError
from selfcorrect.vision.detectors import Detection

IMAGE = Image.new("RGB", (64, 64), (200, 200, 200))


class FakeDetector:
    """Returns fixed detections per phrase and records what it was asked."""

    def __init__(self, found: dict[str, list[tuple[tuple, float]]]):
        self.found = found
        self.asked: list[list[str]] = []

    def detect(self, image, phrases):
        self.asked.append(list(phrases))
        return {p: [Detection(p, box, score) for box, score in self.found.get(p, [])] for p in phrases}


LEFT, RIGHT, MIDDLE = (0.05, 0.4, 0.25, 0.6), (0.7, 0.4, 0.9, 0.6), (0.4, 0.4, 0.6, 0.6)


def test_counts_and_relations_become_findings_in_expected_order():
    detector = FakeDetector({"red circle": [(LEFT, 0.9), (MIDDLE, 0.7)], "blue square": [(RIGHT, 0.8)]})
    critic = DetectionCritic(detector)
    verdict = critic.critique(IMAGE, "two red circles left of a blue square")
    assert detector.asked == [["red circle", "blue square", "circle", "square"]]
    assert [f.requirement for f in verdict.findings] == [
        "exactly 2 red circles",
        "at least 1 blue square",
        "red circle left of blue square",
    ]
    assert [f.passed for f in verdict.findings] == [True, True, True]
    assert verdict.findings[0].score == pytest.approx(0.8)  # (0.9 + 0.7) / 2
    assert verdict.findings[1].score == pytest.approx(0.8)
    assert verdict.findings[2].score == 1.0
    assert verdict.findings[0].box == (LEFT[0], LEFT[1], MIDDLE[2], MIDDLE[3])
    assert verdict.passed and verdict.score == pytest.approx((0.8 + 0.8 + 1.0) / 3)


def test_wrong_counts_broken_relations_and_negations_fail_with_graded_scores():
    detector = FakeDetector(
        {"red circle": [(RIGHT, 0.9), (LEFT, 0.6), (MIDDLE, 0.55)], "blue square": [(MIDDLE, 1.0)]}
    )
    verdict = DetectionCritic(detector).critique(IMAGE, "two red circles left of a blue square")
    extra, _, relation = verdict.findings
    assert not extra.passed and extra.explanation == "3 found"
    assert extra.score == pytest.approx((0.9 + 0.6) / 2 * 2 / 3)
    assert not relation.passed and relation.score == pytest.approx(1 / 3)  # only LEFT is left of MIDDLE
    assert not verdict.passed and "fails: exactly 2 red circles" in verdict.explanation

    square = [(MIDDLE, 1.0)]
    none = DetectionCritic(FakeDetector({"red circle": [(LEFT, 0.75)], "square": square}))
    verdict = none.critique(IMAGE, "a square and no red circles")
    assert verdict.findings[1].requirement == "no red circles"
    assert not verdict.findings[1].passed and verdict.findings[1].score == pytest.approx(0.25)
    clean = DetectionCritic(FakeDetector({"square": square})).critique(IMAGE, "a square and no red circles")
    assert clean.passed and clean.score == 1.0


def test_weak_detections_grade_findings_but_do_not_count():
    weak = FakeDetector({"red circle": [(LEFT, 0.9), (RIGHT, 0.2)]})
    verdict = DetectionCritic(weak).critique(IMAGE, "two red circles")
    assert not verdict.passed and verdict.findings[0].explanation == "1 found"
    assert verdict.findings[0].score == pytest.approx((0.9 + 0.2) / 2)  # partial credit for the maybe
    assert verdict.findings[0].box == LEFT  # only counted detections are placed
    assert verdict.details["detections"]["red circle"] == [{"box": list(LEFT), "score": 0.9}]
    assert DetectionCritic(weak).critique(IMAGE, "one red circle").passed  # the weak one is not a second
    assert not DetectionCritic(weak, min_score=0.1).critique(IMAGE, "one red circle").passed
    negation = DetectionCritic(FakeDetector({"red circle": [(LEFT, 0.25)], "square": [(MIDDLE, 1.0)]}))
    verdict = negation.critique(IMAGE, "a square and no red circles")
    assert verdict.passed and verdict.findings[1].score == pytest.approx(0.75)


def test_a_missing_group_fails_its_relation_with_score_zero():
    verdict = DetectionCritic(FakeDetector({"red circle": [(LEFT, 0.9)]})).critique(
        IMAGE, "a red circle left of a blue square"
    )
    assert [f.passed for f in verdict.findings] == [True, False, False]
    assert verdict.findings[2].score == 0.0 and verdict.findings[2].explanation == "no blue square found"


def test_min_score_is_checked():
    with pytest.raises(ValueError, match="min_score"):
        DetectionCritic(FakeDetector({}), min_score=2)


def test_compare_prefers_the_better_image_and_ties_equal_ones():
    class ByImage(FakeDetector):
        def detect(self, image, phrases):
            good = image.getpixel((0, 0)) == (0, 0, 0)
            return {p: [Detection(p, LEFT, 0.9)] if good and p == "red circle" else [] for p in phrases}

    critic = DetectionCritic(ByImage({}))
    good = Image.new("RGB", (64, 64), (0, 0, 0))
    verdict = critic.compare(IMAGE, good, "a red circle")
    assert verdict.preference == "second" and verdict.confidence == pytest.approx(0.95)
    assert critic.compare(IMAGE, IMAGE, "a red circle").preference == "tie"


def test_protocols_registry_and_bad_input():
    critic = DetectionCritic(FakeDetector({}))
    assert isinstance(critic, ImageCritic) and isinstance(critic, PairwiseCritic)
    with pytest.raises(PromptError):
        critic.critique(IMAGE, "a dog riding a bicycle")
    with pytest.raises(ValueError, match="one prompt per image"):
        critic.critique_many([IMAGE, IMAGE], ["a red circle"])
    given = FakeDetector({})
    assert CRITICS["detection"](detector=given).detector is given


def test_free_text_goes_through_expected_of():
    from selfcorrect.diffusion.expected import Expected, ExpectedObject

    dog = Expected((ExpectedObject("dog", count=2, exact=True),), prompt="two dogs")
    critic = DetectionCritic(FakeDetector({"dog": [(LEFT, 0.8), (RIGHT, 0.6)]}), expected_of=lambda p: dog)
    verdict = critic.critique(IMAGE, "two dogs playing in the park")
    assert verdict.passed and verdict.findings[0].requirement == "exactly 2 dogs"


def test_world_detector_judges_rendered_scenes():
    from selfcorrect.world.render import render
    from selfcorrect.world.scene import Scene, WorldObject

    critic = CRITICS["detection"]()  # the world CLIP's proposals
    scene = Scene(
        objects=(
            WorldObject("circle", "red", "large", (0.05, 0.35, 0.35, 0.65)),
            WorldObject("square", "blue", "large", (0.6, 0.35, 0.9, 0.65)),
        )
    )
    image = render(scene)
    right = critic.critique(image, "a red circle left of a blue square")
    wrong = critic.critique(image, "a red circle right of a blue square")
    assert right.passed and not wrong.passed and right.score > wrong.score
    assert critic.compare(image, image, "a red circle").preference == "tie"
