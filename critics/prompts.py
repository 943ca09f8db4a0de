"""The prompts critics send to a VLM, and the verdict formats they expect back.

One place for them, because two sides must agree on every character: the critics (which send
them to any VLM) and the world VLM's training data (:mod:`selfcorrect.world.conversations`),
which teaches the embedded model to answer them.

* LLaVA-Critic (Xiong et al. 2024; the ``lmms-lab/llava-critic-7b`` model card): a pointwise
  prompt ("score the response out of 100") and a pairwise prompt ("which answer is better") for
  judging a model's *answer* about an image. Kept word for word, typo included, because that is
  what the released critic was trained on.
* The same two judgements for a *generated image* against its text prompt (our adaptation: the
  image is the response, the text prompt is the question).
* VQAScore's yes/no question (Lin et al. 2024).
* VISCO's LookBack (Wu et al. 2024): solve, list visual questions per step, answer each, critique.
* TLDR's caption correction from flagged words (Fu et al. 2024).

Verdict formats the world VLM emits (the critics' parsers also accept LLaVA-Critic's other formats):

=================== ===========================================================================
judgement           answer
=================== ===========================================================================
pointwise           ``Final Score: 70`` on the first line, then the reasons
pairwise            ``The better response: first`` / ``second`` / :data:`TIE_RESPONSES`, reasons
image pointwise     ``Final Score: 70``, then the reasons
image pairwise      ``The better image: first`` / ``second`` / :data:`TIE_IMAGES`, reasons
VQAScore            ``Yes`` / ``No``
critique            VISCO's JSON: ``{"step_1": {"correctness": true, "explanation": ""}, ...,
                    "answer_correctness": false}``
=================== ===========================================================================

The score comes first so that a critic can read it from one forward pass (the probabilities of
``Final Score: 0`` .. ``Final Score: 100``) without generating the reasons.
"""

from __future__ import annotations

LLAVA_CRITIC_POINTWISE = (
    "Given an image and a corresponding question, please serve as an unbiased and fair judge to "
    "evaluate the quality of answer answers provided by a Large Multimodal Model (LMM). Score the "
    "response out of 100 and explain your reasoning with specific details. Your task is provided as "
    "follows:\nQuestion: [{question}]\nThe LMM response: [{response}]\nASSISTANT:\n"
)
LLAVA_CRITIC_PAIRWISE = (
    "Given an image and a corresponding question, please serve as an unbiased and fair judge to "
    "evaluate the quality of the answers provided by a Large Multimodal Model (LMM). Determine which "
    "answer is better and explain your reasoning with specific details. Your task is provided as "
    "follows:\nQuestion: [{question}]\nThe first response: [{first}]\nThe second response: "
    "[{second}]\nASSISTANT:\n"
)
IMAGE_POINTWISE = (
    "Given an image generated from a text prompt, please serve as an unbiased and fair judge to "
    "evaluate how well the image matches the prompt. Score the image out of 100 and explain your "
    "reasoning with specific details. Your task is provided as follows:\nPrompt: [{prompt}]\n"
)
IMAGE_PAIRWISE = (
    "Given two images generated from the same text prompt, please serve as an unbiased and fair "
    "judge to evaluate which image matches the prompt better. Determine which image is better and "
    "explain your reasoning with specific details. Your task is provided as follows:\n"
    "Prompt: [{prompt}]\n"
)
VQASCORE = 'Does this figure show "{text}"? Please answer yes or no.'

SCORE_PREFIX = "Final Score: "
BETTER_RESPONSE = "The better response: "
BETTER_IMAGE = "The better image: "
FIRST, SECOND = "first", "second"
TIE_RESPONSES = "Both responses are equally good."
TIE_IMAGES = "Both images are equally good."
YES, NO = "Yes", "No"

# LookBack (VISCO). The solve prompt asks for numbered steps and a last "Answer:" line.
SOLVE = "{question} Think step by step."
VISUAL_QUERIES = (
    "Question: {question}\nReasoning so far:\n{steps}\nList the questions that check the last step "
    "against the image, one per line, or N/A."
)
VERIFY = "{question} Answer briefly."
CRITIQUE = (
    "Evaluate the accuracy of each reasoning step and the final answer to the question about the "
    "image. Judge each step in isolation. If a step is incorrect, briefly explain why.\n"
    "Question: {question}\nReasoning:\n{steps}\nAnswer: {answer}\n{evidence}"
    'Reply in JSON: {{"step_1": {{"correctness": true, "explanation": ""}}, ..., '
    '"answer_correctness": true}}'
)
EVIDENCE = "Visual information:\n{bullets}\n"  # EVIDENCE_BULLET lines
# One visual question and its answer. VISCO's bullets are "* question - answer"; naming the step a
# question checks lets a small critic find a step's evidence by its number, as it finds the step.
EVIDENCE_BULLET = "* Step {step}: {question} - {answer}"


def evidence_bullets(checks) -> str:
    """EVIDENCE's bullets from ``checks``: per step (1, 2, ...), its (question, answer) pairs."""
    return "\n".join(
        EVIDENCE_BULLET.format(step=k + 1, question=q, answer=a)
        for k, pairs in enumerate(checks)
        for q, a in pairs
    )


NOT_APPLICABLE = "N/A"
# LookBack's reference answer in the synthesis prompt (VISCO flags it as possibly wrong). It goes
# in CRITIQUE's {evidence} slot after the bullets; the world VLM never saw it in training, so the
# LookBack critic leaves it out unless asked (``with_reference=True``).
REFERENCE = "Reference answer (it MAY OR MAY NOT be correct): {answer}\n"
# VISCO's correction prompt (setting ASE: each step followed by its critique), in SOLVE's output
# format. For general VLMs: the world VLM was not trained on it, so the LookBack critic falls back
# to a fresh SOLVE when the reply has no "Answer:" line.
CORRECTION = (
    "{question}\nBelow is a step-by-step answer to this question, with a critique of {critiqued}. "
    "The critique may or may not be correct.\n{reasoning}\nTaking the critique into account, think "
    'step by step and answer the question again. Write each step as "Step i: ..." on its own line '
    'and end with "Answer: ...".'
)
CRITIQUE_LINE = "  - Critique: {label}"  # after each step and the answer in CORRECTION

# TLDR's self-correction: flagged words are hints, not verdicts.
FIX_CAPTION = (
    "Fix the caption of the image with more attention to the following words: {words}. Make minimal "
    "edits; the highlighted words are not necessarily wrong.\nCaption: {caption}"
)
CORRECT_CAPTION = (
    "This caption may contain mistakes. Rewrite it so that it is true of the image.\nCaption: {caption}"
)

# The world VLM's own instructions (plain tasks).
DESCRIBE = "Describe the image."
GROUND = "Find every {phrase}. Answer with bounding boxes."
# An experimental training task (``relate``, weight 0 by default): a relation question answered in
# small steps: both objects' centres along the relation's axis (percent of the image side), the
# relation they make, then Yes / No. Asked directly, the answer is an XOR of the relation word and
# which object is further along, which the world VLM has not learnt. In 1200 steps the steps did
# not learn either (the world VLM's model card); the critics judge relations from boxes instead.
LOCATE_FIRST = "{question} Find both objects first."
LOCATED = "From the {side}: the {a} at {pa}, the {b} at {pb}. The {a} is {relation} the {b}. {answer}."
NO_BOXES = "None"
