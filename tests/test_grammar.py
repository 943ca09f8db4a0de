"""Prompt grammar: parsing, errors, canonical text and captions."""

import random

import pytest

from selfcorrect.errors import PromptError, UnsatisfiableError
from selfcorrect.world.grammar import (
    CAPTION_STYLES,
    canonical_prompt,
    caption,
    parse_prompt,
    varied_prompt,
)
from selfcorrect.world.requirements import (
    CountRequirement,
    ObjectQuery,
    RelationRequirement,
    Requirements,
    evaluate,
)
from selfcorrect.world.sampling import random_scene, sample_scene
from selfcorrect.world.scene import Scene, WorldObject


def some(shape, colour=None, size=None, n=1):
    return CountRequirement(ObjectQuery(shape, colour, size), n, exact=False)


def exactly(shape, n, colour=None, size=None):
    return CountRequirement(ObjectQuery(shape, colour, size), n, exact=True)


def req(*objects, relations=()):
    return Requirements(tuple(objects), tuple(RelationRequirement(*r) for r in relations))


# --- parsing ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, expected, category",
    [
        ("a circle", req(some("circle")), "single_object"),
        ("a small circle", req(some("circle", size="small")), "single_object"),
        ("a blue square", req(some("square", "blue")), "colors"),
        ("three triangles", req(exactly("triangle", 3)), "counting"),
        ("one circle", req(exactly("circle", 1)), "counting"),
        ("two red circles", req(exactly("circle", 2, "red")), "counting"),
        ("a circle and a square", req(some("circle"), some("square")), "two_objects"),
        (
            "a red circle and a blue square",
            req(some("circle", "red"), some("square", "blue")),
            "color_attribution",
        ),
        (
            "a circle left of a square",
            req(some("circle"), some("square"), relations=[(0, "left of", 1)]),
            "position",
        ),
        ("a blue square and no circles", req(some("square", "blue"), exactly("circle", 0)), "negation"),
        (
            "two red circles and a blue square",
            req(exactly("circle", 2, "red"), some("square", "blue")),
            "counting",
        ),
    ],
)
def test_categories(text, expected, category):
    parsed = parse_prompt(text)
    assert parsed == expected
    assert parsed.category == category
    assert parsed.text == text


@pytest.mark.parametrize(
    "text, same_as",
    [
        # Prefixes, case, whitespace, trailing period.
        ("a photo of a circle", "a circle"),
        ("  A Photo  of a CIRCLE. ", "a circle"),
        ("an image of a circle", "a circle"),
        ("a picture showing a circle", "a circle"),
        ("there are two circles", "two circles"),
        ("there is a circle", "a circle"),
        # Sizes and their synonyms, modifiers in any order.
        ("a big red cross", "a large red cross"),
        ("a red large cross", "a large red cross"),
        ("a tiny square", "a small square"),
        ("a little square", "a small square"),
        # Plurals, digits, number agreement not enforced.
        ("two crosses", "two cross"),
        ("2 crosses", "two crosses"),
        ("exactly two crosses", "two crosses"),
        ("zero crosses and a circle", "no crosses and a circle"),
        # Joiners.
        ("a red circle with two blue squares", "a red circle and two blue squares"),
        ("a circle, a square, and a triangle", "a circle and a square and a triangle"),
        ("a circle, a square and a triangle", "a circle and a square and a triangle"),
        ("a blue square but no circles", "a blue square and no circles"),
        ("a blue square without circles", "a blue square and no circles"),
        ("a blue square without any red circles", "a blue square and no red circles"),
        # Relations.
        ("a circle to the left of a square", "a circle left of a square"),
        ("a circle on the left of a square", "a circle left of a square"),
        ("a circle is left of a square", "a circle left of a square"),
        ("a circle to the right of a square", "a circle right of a square"),
        ("a circle under a square", "a circle below a square"),
        ("a circle beneath a square", "a circle below a square"),
        ("a circle underneath a square", "a circle below a square"),
        # A repeated description inside a relation, or "the", refers back to the same group.
        (
            "a circle left of a square and a triangle above a square",
            "a circle left of a square and a triangle above the square",
        ),
        (
            "a red circle left of a square and a triangle above the circle",
            "a red circle left of a square and a triangle above the red circle",
        ),
        ("the circle left of a square", "a circle left of a square"),
    ],
)
def test_equivalent_wordings(text, same_as):
    assert parse_prompt(text) == parse_prompt(same_as)


def test_at_least_and_overlapping_groups():
    assert parse_prompt("at least two circles") == req(some("circle", n=2))
    # Overlapping groups are fine when consistent: two circles, none of them red.
    assert parse_prompt("two circles and no red circles") == req(
        exactly("circle", 2), exactly("circle", 0, "red")
    )
    # "a circle" merged into "two circles" inside a relation keeps the exact count.
    parsed = parse_prompt("two circles left of a square and a circle above a triangle")
    assert parsed.objects[0] == exactly("circle", 2)
    assert len(parsed.objects) == 3 and len(parsed.relations) == 2


# --- errors -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, error, message",
    [
        (
            "a red hexagon",
            PromptError,
            'could not understand "hexagon" in "a red hexagon": shapes are circle, square, triangle, cross',
        ),
        ("a pink circle", PromptError, 'could not understand "pink" in "a pink circle": colours are'),
        ("", PromptError, "the prompt is empty"),
        ("  .  ", PromptError, "the prompt is empty"),
        ("a circle " * 30, PromptError, "the limit is 200"),
        ("a circle?", PromptError, 'could not understand "?"'),
        ("red circles", PromptError, 'could not understand "red" in "red circles": an object starts with'),
        ("a circle and", PromptError, 'ends too early: expected an object after "and"'),
        ("a red", PromptError, "expected a shape"),
        ("a photo of", PromptError, "ends too early"),
        ("a red object", PromptError, 'could not understand "object"'),
        ("a red blue circle", PromptError, "cannot be both red and blue"),
        ("a circle on top of a square", PromptError, 'say "above"'),
        ("a circle over a square", PromptError, 'say "above"'),
        ("a circle beside a square", PromptError, "relations are left of, right of, above, below"),
        ("a circle is near a square", PromptError, 'could not understand "near"'),
        ("no red triangles", PromptError, "only names absent objects"),
        ("a circle and a circle", PromptError, 'names "circle" twice'),
        ("a circle left of no squares", PromptError, "asks for no squares but gives them a position"),
        ("no circles left of a square", PromptError, "cannot have a position"),
        (
            "a red circle and a blue circle and the circle above a square",
            PromptError,
            "could mean the red circle or the blue circle",
        ),
        ("at least zero circles", PromptError, "at least zero"),
        # Statically unsatisfiable.
        ("five circles", UnsatisfiableError, "the world shows zero to four of a kind"),
        ("9 objects", UnsatisfiableError, "the world shows zero to four of a kind"),
        ("four circles, four squares and a triangle", UnsatisfiableError, "at most 8"),
        ("a red circle left of itself", UnsatisfiableError, "cannot be left of itself"),
        ("a circle left of a circle", UnsatisfiableError, "cannot be left of itself"),
        ("two circles and no circles", UnsatisfiableError, "exactly two circles and for no circles"),
        (
            "two circles and three circles left of a square",
            UnsatisfiableError,
            "exactly two circles and for exactly three",
        ),
        ("a red circle and no circles", UnsatisfiableError, "every red circle is a circle"),
        ("two circles and three red circles", UnsatisfiableError, "every red circle is a circle"),
        (
            "a circle left of a square and the circle right of the square",
            UnsatisfiableError,
            "the circle left of the square and the square left of the circle",
        ),
        ("a circle above a square and a red circle below the square", UnsatisfiableError, "above"),
        (
            "a circle left of a square, the square left of a cross and the cross left of the circle",
            UnsatisfiableError,
            "cannot be satisfied",
        ),
    ],
)
def test_errors_name_the_problem(text, error, message):
    with pytest.raises(error) as info:
        parse_prompt(text)
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_prompt_must_be_text():
    with pytest.raises(PromptError, match="must be text"):
        parse_prompt(None)


def test_relations_between_overlapping_groups_are_left_to_the_sampler():
    # One small red circle can be in both groups, so this is satisfiable: no static error.
    assert parse_prompt("a small circle left of a red circle and the red circle left of the small circle")
    # Statically consistent but impossible: the sampler is the one to say so.
    with pytest.raises(UnsatisfiableError):
        sample_scene(parse_prompt("one circle and a red circle and a blue circle"), seed=0)


# --- canonical text -------------------------------------------------------------------------------

ROUND_TRIP = [
    "a circle",
    "two small red circles and a large blue square",
    "at least three crosses",
    "a circle left of a square and a triangle above the square",
    "a square and a circle left of the square",
    "a circle and a square and the square above the circle",
    "a red circle left of a circle",
    "two circles, no red circles and a triangle below the circles",
    "an orange cross above a small purple triangle, the triangle right of a square and no circles",
]


@pytest.mark.parametrize("text", ROUND_TRIP)
def test_canonical_prompt_round_trips(text):
    parsed = parse_prompt(text)
    assert parse_prompt(canonical_prompt(parsed)) == parsed
    assert canonical_prompt(parse_prompt(canonical_prompt(parsed))) == canonical_prompt(parsed)


def test_canonical_prompt_examples():
    assert canonical_prompt(parse_prompt("A photo of 2 tiny red circles with a big blue square.")) == (
        "two small red circles and a large blue square"
    )
    assert canonical_prompt(parse_prompt("a blue square without circles")) == "a blue square and no circles"


@pytest.mark.parametrize("text", ROUND_TRIP)
def test_varied_wordings_round_trip(text):
    parsed = parse_prompt(text)
    rng = random.Random(0)
    wordings = {varied_prompt(parsed, rng) for _ in range(40)}
    assert len(wordings) > 5
    for wording in wordings:
        assert parse_prompt(wording) == parsed, wording


# --- captions -------------------------------------------------------------------------------------


@pytest.mark.parametrize("style", CAPTION_STYLES)
def test_every_caption_is_satisfied_by_its_scene(style):
    for seed in range(300):
        scene = random_scene(seed, min_objects=1, max_objects=8)
        text = caption(scene, style, random.Random(seed))
        requirements = parse_prompt(text)
        results = evaluate(scene.objects, requirements)
        assert all(r.passed for r in results), (text, [r.reason for r in results if not r.passed])
        assert parse_prompt(canonical_prompt(requirements)) == requirements


def test_caption_styles_on_a_fixed_scene():
    objects = (
        WorldObject("circle", "red", "small", (0.05, 0.40, 0.23, 0.58)),
        WorldObject("circle", "red", "small", (0.05, 0.70, 0.23, 0.88)),
        WorldObject("square", "blue", "large", (0.60, 0.05, 0.88, 0.33)),
    )
    scene = Scene(objects)
    assert caption(scene) == "two small red circles and a large blue square"
    assert caption(scene, "geneval") == "a photo of two red circles and a blue square"
    assert caption(scene, "counted") == "two red circles, one blue square, no triangles and no crosses"
    # The lower circle is diagonal to the square (left of and below it), so no relation holds
    # alone for every circle-square pair and the positional caption adds none.
    assert caption(scene, "positional") == caption(scene)


def test_positional_caption_names_a_clear_relation():
    objects = (
        WorldObject("circle", "red", "small", (0.05, 0.40, 0.23, 0.58)),
        WorldObject("square", "blue", "large", (0.60, 0.35, 0.88, 0.63)),
    )
    text = caption(Scene(objects), "positional")
    assert text in (
        "a small red circle left of a large blue square",
        "a large blue square right of a small red circle",
    )


def test_captions_are_deterministic_and_natural_ones_vary():
    scene = random_scene(7, min_objects=3, max_objects=5)
    assert caption(scene, "natural") == caption(scene, "natural")
    assert len({caption(scene, "natural", random.Random(s)) for s in range(30)}) > 10


def test_caption_rejects_bad_input():
    with pytest.raises(ValueError, match="unknown caption style"):
        caption(random_scene(0), "poetic")
    with pytest.raises(ValueError, match="empty scene"):
        caption(Scene(()))
