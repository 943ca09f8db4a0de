"""The expected-objects schema and the deterministic planner (no models)."""

import pytest

from selfcorrect.diffusion.expected import Expected, ExpectedObject, ExpectedRelation, ExpectedSchemaError
from selfcorrect.diffusion.plan import free_box, holds, iou, plan, plan_from_layout, queries
from selfcorrect.vision.detectors import Detection
from selfcorrect.world.grammar import parse_prompt


def expected(prompt: str) -> Expected:
    return Expected.from_requirements(parse_prompt(prompt))


def test_from_requirements_keeps_counts_attributes_and_relations():
    e = expected("two small red circles left of a blue square")
    assert e.objects == (
        ExpectedObject("circle", ("small", "red"), 2, True),
        ExpectedObject("square", ("blue",), 1, False),
    )
    assert e.relations == (ExpectedRelation(0, "left of", 1),)
    assert Expected.from_dict(e.to_dict()) == e
    absent = expected("a circle and no crosses").objects[1]
    assert absent == ExpectedObject("cross", (), 0, True) and absent.phrase(plural=True) == "crosses"


@pytest.mark.parametrize(
    "data, where",
    [
        ([], "JSON object"),
        ({"objects": []}, "objects"),
        ({"objects": [{"noun": ""}]}, "objects[0].noun"),
        ({"objects": [{"noun": "dog", "count": -1}]}, "objects[0].count"),
        ({"objects": [{"noun": "dog", "count": True}]}, "objects[0].count"),
        ({"objects": [{"noun": "dog", "count": 0}]}, "exact true"),
        ({"objects": [{"noun": "dog", "colour": "red"}]}, "unknown keys"),
        (
            {"objects": [{"noun": "dog"}], "relations": [{"subject": 0, "relation": "near", "reference": 0}]},
            "relation",
        ),
        (
            {
                "objects": [{"noun": "dog"}],
                "relations": [{"subject": 0, "relation": "above", "reference": 3}],
            },
            "reference",
        ),
        (
            {
                "objects": [{"noun": "dog"}],
                "relations": [{"subject": 0, "relation": "above", "reference": 0}],
            },
            "itself",
        ),
    ],
)
def test_schema_errors_name_the_field(data, where):
    with pytest.raises(ExpectedSchemaError, match=where.replace("[", r"\[").replace("]", r"\]")):
        Expected.from_dict(data)


def test_relation_geometry():
    left, right = (0.1, 0.4, 0.3, 0.6), (0.6, 0.4, 0.8, 0.6)
    assert holds(left, "left of", right) and holds(right, "right of", left)
    assert not holds(left, "right of", right) and not holds(left, "above", right)
    top, bottom = (0.4, 0.05, 0.6, 0.25), (0.4, 0.7, 0.6, 0.9)
    assert holds(top, "above", bottom) and holds(bottom, "below", top)
    assert not holds((0.3, 0.4, 0.5, 0.6), "left of", (0.4, 0.4, 0.6, 0.6))  # too close: no margin
    assert iou(left, left) == pytest.approx(1.0) and iou(left, right) == 0.0


def test_free_box_avoids_objects_and_obeys_constraints():
    reference = (0.4, 0.4, 0.6, 0.6)
    box = free_box(0.2, [reference], [("left of", reference, True)])
    assert holds(box, "left of", reference) and iou(box, reference) == 0.0
    assert 0.0 <= box[0] and box[2] <= 1.0
    assert free_box(0.2, [reference], [("left of", reference, True)]) == box  # deterministic


def test_missing_objects_are_added_and_extras_deleted():
    e = expected("two red circles")
    one = {"red circle": [Detection("x", (0.1, 0.1, 0.3, 0.3), 1.0)]}
    ops = plan(e, one)
    assert [op.kind for op in ops] == ["add"]
    assert iou(ops[0].target, (0.1, 0.1, 0.3, 0.3)) == 0.0 and ops[0].phrase == "red circle"
    three = {
        "red circle": [
            Detection("x", (0.1, 0.1, 0.3, 0.3), 0.9),
            Detection("x", (0.5, 0.5, 0.7, 0.7), 0.4),
            Detection("x", (0.7, 0.1, 0.9, 0.3), 0.8),
        ]
    }
    ops = plan(e, three)
    assert [(op.kind, op.source) for op in ops] == [("delete", (0.5, 0.5, 0.7, 0.7))]  # the least confident
    assert plan(e, {"red circle": three["red circle"][:2]}) == []


def test_wrong_colour_is_recoloured_not_added():
    e = expected("a red circle")
    blue = Detection("x", (0.2, 0.2, 0.4, 0.4), 1.0)
    ops = plan(e, {"red circle": [], "circle": [blue]})
    assert [(op.kind, op.phrase, op.source, op.target) for op in ops] == [
        ("recolour", "red circle", blue.box, blue.box)
    ]
    # A circle that already is the red circle is not "unclaimed".
    assert plan(e, {"red circle": [blue], "circle": [blue]}) == []
    assert queries(e) == ["red circle", "circle"]


def test_negation_deletes_every_instance():
    e = expected("a photo of a red square and no circles")
    circles = [Detection("x", (0.1, 0.1, 0.3, 0.3), 1.0), Detection("x", (0.6, 0.6, 0.8, 0.8), 1.0)]
    ops = plan(
        e, {"red square": [Detection("x", (0.4, 0.1, 0.6, 0.3), 1.0)], "circles": [], "circle": circles}
    )
    assert sorted(op.kind for op in ops) == ["delete", "delete"]
    assert {op.source for op in ops} == {d.box for d in circles}


def test_broken_relation_moves_the_subject_and_additions_respect_relations():
    e = expected("a blue square left of a green triangle")
    square, triangle = (0.7, 0.4, 0.9, 0.6), (0.2, 0.4, 0.4, 0.6)
    ops = plan(
        e, {"blue square": [Detection("x", square, 1.0)], "green triangle": [Detection("x", triangle, 1.0)]}
    )
    assert [op.kind for op in ops] == ["move"] and ops[0].source == square
    assert holds(ops[0].target, "left of", triangle)
    # Nothing detected: both are added, and placed so that the relation holds.
    ops = plan(e, {})
    assert [op.kind for op in ops] == ["add", "add"]
    assert holds(ops[0].target, "left of", ops[1].target)


def test_requirements_the_critic_passed_are_left_alone():
    e = expected("two red circles and a blue square")
    assert [op.phrase for op in plan(e, {})] == ["red circle", "red circle", "blue square"]
    assert [op.phrase for op in plan(e, {}, failing={1})] == ["blue square"]
    assert plan(e, {}, failing=set()) == []


def test_new_objects_avoid_undetected_things():
    e = expected("a red circle")
    thing = (0.0, 0.0, 0.6, 0.6)  # something the detector did not name
    (op,) = plan(e, {}, avoid=[thing])
    assert op.kind == "add" and iou(op.target, thing) == 0.0


def test_plan_from_layout_keeps_moves_recolours_adds_and_deletes():
    e = expected("two red circles left of a blue square")
    kept, far = (0.05, 0.1, 0.25, 0.3), (0.8, 0.8, 0.95, 0.95)
    green = (0.4, 0.7, 0.6, 0.9)  # a circle of the wrong colour
    extra = (0.5, 0.05, 0.65, 0.2)
    found = {
        "red circle": [Detection("x", kept, 0.9), Detection("x", far, 0.8), Detection("x", extra, 0.3)],
        "blue square": [],
        "circle": [Detection("x", kept, 0.9), Detection("x", far, 0.8), Detection("x", green, 0.7)],
        "square": [],
    }
    moved_to, square = (0.05, 0.5, 0.25, 0.7), (0.7, 0.3, 0.9, 0.5)
    layout = [("red circle", kept), ("red circle", moved_to), ("blue square", square)]
    ops = plan_from_layout(e, found, layout)
    assert [(op.kind, op.phrase, op.source, op.target) for op in ops] == [
        ("move", "red circle", extra, moved_to),  # the nearest free red circle goes there
        ("add", "blue square", None, square),
        ("delete", "red circle", far, None),
    ]
    # No free red circle left: the unclaimed (green) circle is recoloured, then moved.
    ops = plan_from_layout(e, {**found, "red circle": [Detection("x", kept, 0.9)]}, layout)
    assert [(op.kind, op.source, op.target) for op in ops] == [
        ("recolour", green, green),
        ("move", green, moved_to),
        ("add", None, square),
    ]
    # A layout the detections already show needs nothing.
    two = expected("two red circles")
    shown = {"red circle": [Detection("x", kept, 0.9), Detection("x", far, 0.8)], "circle": []}
    assert plan_from_layout(two, shown, [("red circle", far), ("red circle", kept)]) == []
