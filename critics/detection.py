"""A GenEval-style detector critic: detect what the prompt names, count it, check where it is.

GenEval (Ghosh et al., NeurIPS 2023) judges a text-to-image model by running an object detector
on its images and checking each requirement of the prompt against the detections: the right
objects, the right counts, colours (by classifying the cropped object) and positions (by box
centres). This critic does the same with any :class:`~selfcorrect.vision.detectors.Detector`
(the world CLIP's proposals, OWLv2, a VLM's grounding) and turns the result into an
:class:`ImageVerdict` with one :class:`Finding` per requirement, each with a box. It is the
critic SLD's loop implies (its detector decides what is wrong), made explicit and re-run on
every edit.

The prompt becomes an :class:`~selfcorrect.diffusion.expected.Expected` (the world grammar by
default; pass ``expected_of`` for free text, e.g. a controller's
:meth:`~selfcorrect.diffusion.controller.Controller.expected`). Findings come in the order
``Expected`` lists requirements (object groups, then relations), so the loop can plan for
exactly the failed ones.

**Scores.** The detector's confidences of the detections of a group's full phrase, highest first
(``s_1 >= s_2 >= ...``), grade each finding; ``n`` counts those of at least ``min_score``, the
*instances* (weaker ones only earn partial credit, e.g. for an object the detector is unsure of):

======================== ============================================= ============================
requirement              score                                         passes when
======================== ============================================= ============================
at least ``c`` (c >= 1)  ``(s_1 + ... + s_c) / c`` (missing s are 0)   ``n >= c``
exactly ``c``            as above, times ``c / n`` when ``n > c``      ``n == c``
none (``c == 0``)        ``1 - s_1`` (1 when nothing is found)         ``n == 0``
relation A rel B         share of (A, B) instance pairs that hold      every pair holds (and both
                         (:func:`~selfcorrect.diffusion.plan.holds`),  groups were found)
                         0 when a group is missing
======================== ============================================= ============================

The image score is the mean of the findings' scores; the image passes when every finding does.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from selfcorrect.critics.verdicts import Finding, ImageVerdict, PairwiseVerdict, enclosing


def world_expected(prompt: str):
    """``prompt`` through the world grammar, as an :class:`~selfcorrect.diffusion.expected.Expected`.

    Raises:
        selfcorrect.errors.PromptError: the grammar rejects the prompt.
    """
    from selfcorrect.diffusion.expected import Expected
    from selfcorrect.world.grammar import parse_prompt

    return Expected.from_requirements(parse_prompt(prompt))


class DetectionCritic:
    """Judge an image by detecting the prompt's objects and checking counts and relations.

    Args:
        detector: anything with ``detect(image, phrases) -> {phrase: [detection]}`` (each
            detection has ``box`` (normalised) and ``score``); ``detect_many(images, phrases)``
            is used when it has one.
        expected_of: ``prompt -> Expected``; default :func:`world_expected`.
        min_score: detections below this confidence are not counted (nor placed); they only
            grade a finding (a missing object that some region might be earns partial credit).
            Give the critic a detector that reports such weak detections (e.g. clip-proposals
            with ``min_probability=0.05``, as :data:`~selfcorrect.critics.CRITICS` builds it).
    """

    kinds = frozenset({"image", "pairwise"})
    name = "detection"

    def __init__(self, detector, *, expected_of: Callable | None = None, min_score: float = 0.5):
        if not 0.0 <= min_score <= 1.0:
            raise ValueError(f"min_score must be in [0, 1], got {min_score}")
        self.detector = detector
        self.expected_of = expected_of or world_expected
        self.min_score = min_score

    def __repr__(self) -> str:
        return f"DetectionCritic({self.detector!r})"

    def critique(self, image, prompt: str) -> ImageVerdict:
        """Per-requirement findings for ``image`` against ``prompt``, with boxes."""
        return self.critique_many([image], [prompt])[0]

    def critique_many(self, images: Sequence, prompts: Sequence[str]) -> list[ImageVerdict]:
        """:meth:`critique` for B (image, prompt) pairs (one ``detect_many`` call if the detector has it)."""
        from selfcorrect.diffusion.plan import queries
        from selfcorrect.vision.images import load_image

        if len(images) != len(prompts) or not prompts:
            raise ValueError(f"give one prompt per image; got {len(images)} images, {len(prompts)} prompts")
        expected = [self.expected_of(p) for p in prompts]
        phrases = [queries(e) for e in expected]
        loaded = [load_image(im) for im in images]
        if hasattr(self.detector, "detect_many"):
            found = self.detector.detect_many(loaded, phrases)
        else:
            found = [self.detector.detect(im, ph) for im, ph in zip(loaded, phrases)]
        return [self._verdict(e, f) for e, f in zip(expected, found)]

    def compare(self, image_a, image_b, prompt: str) -> PairwiseVerdict:
        """The image with the higher score wins (a tie when equal); each is judged alone."""
        a, b = self.critique_many([image_a, image_b], [prompt, prompt])
        if a.score == b.score:
            preference, confidence = "tie", 1.0
        else:
            preference = "first" if a.score > b.score else "second"
            confidence = 0.5 + abs(a.score - b.score) / 2
        return PairwiseVerdict(
            preference=preference,
            confidence=confidence,
            both_orders_agree=True,  # each image is judged alone: there is no order
            explanation=f"score {a.score:.3f} vs {b.score:.3f}",
            critic=self.name,
        )

    def _verdict(self, expected, found: dict[str, list]) -> ImageVerdict:
        from selfcorrect.diffusion.plan import holds

        # candidates grade the findings; instances (confident enough) are counted and placed
        candidates = [sorted(found.get(g.phrase(), ()), key=lambda d: -d.score) for g in expected.objects]
        instances = [[d for d in ds if d.score >= self.min_score] for ds in candidates]
        findings = [
            _group_finding(g, ds, len(mine)) for g, ds, mine in zip(expected.objects, candidates, instances)
        ]
        for rel in expected.relations:
            a, b = instances[rel.subject], instances[rel.reference]
            words = f"{expected.objects[rel.subject].phrase()} {rel.relation} {expected.objects[rel.reference].phrase()}"
            pairs = [(x, y) for x in a for y in b]
            held = sum(holds(x.box, rel.relation, y.box) for x, y in pairs)
            score = held / len(pairs) if pairs else 0.0
            missing = [
                expected.objects[k].phrase() for k, ds in ((rel.subject, a), (rel.reference, b)) if not ds
            ]
            why = f"no {' and no '.join(missing)} found" if missing else f"{held} of {len(pairs)} pairs hold"
            box = enclosing([d.box for d in a + b])
            findings.append(Finding(words, bool(pairs) and held == len(pairs), score, box, why))
        score = sum(f.score for f in findings) / len(findings) if findings else 1.0
        failed = [f.requirement for f in findings if not f.passed]
        return ImageVerdict(
            score=min(max(score, 0.0), 1.0),
            passed=not failed,
            findings=findings,
            explanation=("fails: " + ", ".join(failed)) if failed else "every requirement holds",
            critic=self.name,
            details={
                "detections": {
                    g.phrase(): [
                        {"box": [round(v, 4) for v in d.box], "score": round(d.score, 4)} for d in ds
                    ]
                    for g, ds in zip(expected.objects, instances)
                }
            },
        )


def _group_finding(group, found: list, n: int) -> Finding:
    """The finding for one object group, given its detections (highest confidence first), the
    first ``n`` of which are confident enough to count."""
    c = group.count
    if c == 0:
        words = f"no {group.phrase(plural=True)}"
        score = 1.0 - found[0].score if found else 1.0
        return Finding(words, n == 0, score, enclosing([d.box for d in found[:n]]), f"{n} found")
    score = sum(d.score for d in found[:c]) / c
    if group.exact and n > c:
        score *= c / n
    words = f"{'exactly' if group.exact else 'at least'} {c} {group.phrase(plural=c > 1)}"
    passed = n == c if group.exact else n >= c
    return Finding(
        words, passed, min(max(score, 0.0), 1.0), enclosing([d.box for d in found[:n]]), f"{n} found"
    )
