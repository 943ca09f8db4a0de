"""The embedded world: a small, fully verifiable compositional scene world.

A :class:`Scene` is the single source of truth; :func:`render` draws it, the grammar parses
prompts into :class:`Requirements`, and :func:`evaluate` decides whether objects satisfy them.
The oracle (:mod:`selfcorrect.world.oracle`) reads images back; only ``world/``, training-data
builders, tests and benchmarks may import it.
"""

from selfcorrect.world.data import QA, WorldDataset
from selfcorrect.world.grammar import canonical_prompt, caption, parse_prompt
from selfcorrect.world.negatives import NEGATIVE_KINDS, HardNegative, hard_negatives
from selfcorrect.world.render import render
from selfcorrect.world.requirements import (
    CATEGORIES,
    CountRequirement,
    ObjectQuery,
    RelationRequirement,
    RequirementResult,
    Requirements,
    evaluate,
)
from selfcorrect.world.sampling import random_scene, sample_scene
from selfcorrect.world.scene import COLOURS, PALETTE, RELATIONS, SHAPES, SIZES, Scene, WorldObject
from selfcorrect.world.suites import HELDOUT_COMBOS, is_heldout_combo, load_suite

__all__ = [
    "CATEGORIES", "COLOURS", "HELDOUT_COMBOS", "NEGATIVE_KINDS", "PALETTE", "QA", "RELATIONS", "SHAPES", "SIZES",
    "CountRequirement", "HardNegative", "ObjectQuery", "RelationRequirement", "RequirementResult", "Requirements",
    "Scene", "WorldDataset", "WorldObject", "canonical_prompt", "caption", "evaluate",
    "hard_negatives", "is_heldout_combo", "load_suite", "parse_prompt", "random_scene", "render", "sample_scene",
]  # fmt: skip
