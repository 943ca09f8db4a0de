"""Free text -> :class:`~selfcorrect.diffusion.expected.Expected`: step 1 of the correction loop.

For a prompt of the embedded world the world grammar says what the image should contain
(:meth:`Expected.from_requirements`). For free text a *controller* does: a chat model that answers
in the JSON schema of :meth:`Expected.from_dict`. This module holds its instructions, the
extraction of a JSON object from its answer, and a bounded validate-and-retry loop.

SLD's parser (``sld/llm_chat.py:get_key_objects``, see ``notes/anchor-sld.md``) asks GPT-4 for
chain-of-thought free text and cuts it apart at ``Objects:``, ``Background:`` and ``Negation:``,
evaluating the object list with ``ast.literal_eval``; the call sits in ``while True`` with
``sleep(5)`` on *any* exception, with the API's default temperature. So a model that never produces
the expected shape hangs the run forever, a transient error and a malformed answer look the same,
and two runs of one prompt can parse differently. Here instead:

* **A typed schema, validated.** The model answers one JSON object; :meth:`Expected.from_dict`
  checks every field and names the first bad one (``objects[0].count: ...``). Counts, exactness
  and negation are fields (``"no dogs"`` is count 0, exact), not a separate free-text line.
* **Few-shot examples that cannot drift from the validator.** They are built as
  :class:`Expected` values and rendered with :meth:`Expected.to_dict`, so they satisfy the schema
  by construction (a test checks the round trip).
* **Tolerant extraction, strict validation.** :func:`extract_json` accepts a bare object, one in
  a Markdown fence or one with prose around it (chat models add these), but what it extracts must
  pass the schema unchanged: nothing is guessed or repaired.
* **Bounded, informed retries.** A failed answer goes back to the model with the exact validation
  error and a request for corrected JSON only; after ``1 + max_retries`` calls
  :class:`ControllerError` says which field failed and carries every raw answer. Errors from the
  model call itself (device, memory) are not retried: they propagate at once.
* **Deterministic decoding.** :meth:`Controller.from_pretrained` decodes greedily, so a prompt
  gives the same answer every time.

The same model can also plan step 4 (:meth:`Controller.layout`, :class:`LayoutPlanner`): given
what the image must contain and what the detector found, it proposes the corrected layout as JSON
(phrases and boxes), validated by :func:`parse_layout` (known phrases, the counts, boxes in the
image, every relation holding) with the same bounded retries; SLD asks its LLM for this too.

The model is any callable ``generate(messages) -> str`` over chat messages (``{"role", "content"}``
strings), so an API client or a canned test stub fits as well as a local transformers model
(:class:`ChatGenerator`, built by :meth:`Controller.from_pretrained`).

Example::

    controller = Controller.from_pretrained("Qwen/Qwen2.5-1.5B-Instruct", device="cuda")
    expected = controller.expected("two red apples to the left of a green bowl, no people")
    expected.objects[0]   # ExpectedObject(noun='apple', attributes=('red',), count=2, exact=True)
"""

from __future__ import annotations

import copy
import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

from selfcorrect.diffusion.expected import (
    MAX_COUNT,
    RELATIONS,
    Expected,
    ExpectedObject,
    ExpectedRelation,
    ExpectedSchemaError,
)
from selfcorrect.errors import PromptError, SelfcorrectError

if TYPE_CHECKING:
    from selfcorrect.diffusion.edits import Box

logger = logging.getLogger(__name__)

DEFAULT_MAX_RETRIES = 2
DEFAULT_MAX_NEW_TOKENS = 256
MAX_PROMPT_CHARS = 1000  # a text-to-image prompt; longer text is refused before any model call
SHOWN_OUTPUT_CHARS = 300  # how much of the last raw answer a ControllerError message quotes

Message = dict[str, str]
Generate = Callable[[list[Message]], str]

CONTROLLER_SYSTEM = f"""\
You read a prompt for a text-to-image model and list what the image must contain, as one JSON \
object with exactly these keys:

- "objects": a non-empty list of object groups. Each group is {{"noun": string, "attributes": \
list of strings, "count": integer, "exact": true or false}}.
  - "noun": the object's name in the singular, lowercase ("dog", "traffic light").
  - "attributes": the adjectives the prompt gives it (colour, size, material, ...), in prompt \
order; [] if none.
  - "count": how many, from 0 to {MAX_COUNT}.
  - "exact": true if the image must show exactly "count" of them, false if at least "count".
- "relations": a list of spatial relations, each {{"subject": index, "relation": string, \
"reference": index}}, where the indexes point into "objects" (0 is the first group) and \
"relation" is one of: {", ".join(f'"{r}"' for r in RELATIONS)}. [] if the prompt has none.
- "background": the scene or setting ("a park", "a snowy street"), or "" if the prompt names none.

Rules:
1. One group per distinct noun + attributes: "a red car and a white car" is two groups.
2. "a" / "an" / "some" / a bare noun means count 1, exact false.
3. A number word or digit ("two", "3") means that count, exact true.
4. "no X" / "without X" means count 0, exact true; a relation never involves such a group.
5. "on top of" is "above" and "under" is "below"; leave out any relation not in the list above.
6. Do not invent objects or attributes the prompt does not state.

Answer with the JSON object only: no explanation, no Markdown."""

USER_TEMPLATE = "Prompt: {prompt}"
RETRY_TEMPLATE = (
    "That answer is not valid: {error}. Answer again with the corrected JSON object only, following "
    "the schema and the rules."
)

# (prompt, expected answer): rendered with Expected.to_dict, so they always satisfy the schema
FEW_SHOT: tuple[tuple[str, Expected], ...] = (
    (
        "a cat sitting to the left of two brown dogs in a park",
        Expected(
            objects=(
                ExpectedObject("cat"),
                ExpectedObject("dog", ("brown",), count=2, exact=True),
            ),
            relations=(ExpectedRelation(0, "left of", 1),),
            background="a park",
        ),
    ),
    (
        "three yellow tulips and a small blue vase in a kitchen, with no people",
        Expected(
            objects=(
                ExpectedObject("tulip", ("yellow",), count=3, exact=True),
                ExpectedObject("vase", ("small", "blue")),
                ExpectedObject("person", count=0, exact=True),
            ),
            background="a kitchen",
        ),
    ),
    (
        "a red car above a white car",
        Expected(
            objects=(ExpectedObject("car", ("red",)), ExpectedObject("car", ("white",))),
            relations=(ExpectedRelation(0, "above", 1),),
        ),
    ),
)


LAYOUT_SYSTEM = """\
You plan how to correct an image made for a text-to-image prompt. You get, as JSON, the prompt, \
what the image must contain ("expected": object groups with counts, and spatial relations), the \
phrases of those groups, and the objects a detector found in the image ("detected"), each with a \
box [x0, y0, x1, y1] in fractions of the image's width and height (0, 0 is the top left corner). \
Answer with the layout the corrected image should have, as one JSON object:

{"objects": [{"phrase": one of the phrases, "box": [x0, y0, x1, y1]}, ...]}

Rules:
1. List every object the corrected image should show, one entry per instance.
2. Keep detected objects that are already right, with their boxes unchanged.
3. Give each group its count: exactly "count" when "exact" is true, at least "count" otherwise; \
a group of count 0 gets no entry.
4. Every relation must hold between every pair of instances: "left of" means the subject's box \
lies clearly left of the reference's box, and so on.
5. Boxes lie in [0, 1] with x0 < x1 and y0 < y1; give new objects the size of the detected ones \
and keep them apart from other objects.

Answer with the JSON object only: no explanation, no Markdown."""

# (expected, detections, answer): the worked example of a layout call. The answer passes
# parse_layout (a test checks it): the red circle is kept, the square moves to its right.
LAYOUT_EXAMPLE: tuple[Expected, dict, list[tuple[str, Box]]] = (
    Expected(
        objects=(ExpectedObject("circle", ("red",)), ExpectedObject("square", ("blue",))),
        relations=(ExpectedRelation(0, "left of", 1),),
        prompt="a red circle left of a blue square",
    ),
    {
        "red circle": [SimpleNamespace(box=(0.4, 0.35, 0.65, 0.6), score=0.9)],
        "blue square": [SimpleNamespace(box=(0.1, 0.4, 0.3, 0.6), score=0.8)],
    },
    [("red circle", (0.4, 0.35, 0.65, 0.6)), ("blue square", (0.72, 0.4, 0.92, 0.6))],
)


class ControllerError(SelfcorrectError):
    """The controller's answers failed the schema on every allowed attempt.

    Attributes:
        attempts: the raw answers, in order (``1 + max_retries`` of them).
        error: the validation error of the last answer.
    """

    def __init__(self, message: str, attempts: list[str], error: ExpectedSchemaError):
        super().__init__(message)
        self.attempts = attempts
        self.error = error


def few_shot_messages() -> list[Message]:
    """The few-shot examples as alternating user / assistant chat turns."""
    messages: list[Message] = []
    for prompt, answer in FEW_SHOT:
        messages.append({"role": "user", "content": USER_TEMPLATE.format(prompt=prompt)})
        messages.append({"role": "assistant", "content": json.dumps(answer.to_dict())})
    return messages


def extract_json(text: str) -> dict:
    """The JSON object in a model's answer.

    Accepts a bare object, one inside a Markdown fence (```json ... ```), or one with prose around
    it: the first balanced top-level ``{...}`` that ``json.loads`` accepts. Braces inside JSON
    strings are ignored when balancing; objects nested inside a rejected candidate are not tried
    (an inner ``{"noun": ...}`` is not the answer). Nothing is repaired.

    Raises:
        ExpectedSchemaError: empty text, no ``{``, an object that is never closed (the answer was
            cut off), or no candidate that parses (the message quotes the JSON error).
    """
    if not isinstance(text, str):
        raise ExpectedSchemaError(f"the answer must be text, got {type(text).__name__}")
    if not text.strip():
        raise ExpectedSchemaError("the answer is empty; expected a JSON object")
    try:
        whole = json.loads(text)
    except json.JSONDecodeError:
        pass
    else:
        if isinstance(whole, dict):
            return whole
        raise ExpectedSchemaError(f"expected a JSON object {{...}}, got a JSON {type(whole).__name__}")
    start = text.find("{")
    if start < 0:
        raise ExpectedSchemaError("no JSON object in the answer (no '{' found)")
    first_error: str | None = None
    while start >= 0:
        end = _matching_brace(text, start)
        if end is None:  # never closed: a stray '{' in prose, or the answer was cut off
            start = text.find("{", start + 1)
            continue
        try:
            value = json.loads(text[start : end + 1])
        except json.JSONDecodeError as e:
            first_error = first_error or f"{e.msg} (line {e.lineno}, column {e.colno} of the object)"
        else:
            if isinstance(value, dict):
                return value
        start = text.find("{", end + 1)
    if first_error is not None:
        raise ExpectedSchemaError(f"the answer's {{...}} is not valid JSON: {first_error}")
    # every candidate was unclosed (a balanced one either parses to a dict or sets first_error)
    raise ExpectedSchemaError(
        "the answer's JSON object is never closed (unbalanced braces; was the answer cut off?)"
    )


def _matching_brace(text: str, start: int) -> int | None:
    """Index of the ``}`` closing the ``{`` at ``start``, skipping JSON strings; None if unclosed."""
    depth = 0
    in_string = False
    escaped = False
    for i in range(start, len(text)):
        char = text[i]
        if in_string:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif char == "{":
            depth += 1
        elif char == "}":
            depth -= 1
            if depth == 0:
                return i
    return None


def check_prompt(prompt: str) -> str:
    """The stripped prompt; raises :class:`PromptError` if it is not text, empty or over-long."""
    if not isinstance(prompt, str):
        raise PromptError(f"the prompt must be text, got {type(prompt).__name__}")
    text = prompt.strip()
    if not text:
        raise PromptError("the prompt is empty")
    if len(text) > MAX_PROMPT_CHARS:
        raise PromptError(f"the prompt is {len(text)} characters long; the limit is {MAX_PROMPT_CHARS}")
    return text


@dataclass
class Controller:
    """Turns a free-text prompt into a validated :class:`Expected` with a chat model.

    Attributes:
        generate: ``generate(messages) -> answer text``; messages are ``{"role", "content"}``
            dicts with string content (system, user, assistant). Exceptions it raises propagate
            unchanged (they are not retried).
        max_retries: how many times a failed answer is sent back with its error: at most
            ``1 + max_retries`` calls per prompt.
    """

    generate: Generate
    max_retries: int = field(default=DEFAULT_MAX_RETRIES, kw_only=True)

    def __post_init__(self):
        if not callable(self.generate):
            raise TypeError(f"generate must be callable, got {type(self.generate).__name__}")
        if (
            isinstance(self.max_retries, bool)
            or not isinstance(self.max_retries, int)
            or self.max_retries < 0
        ):
            raise ValueError(f"max_retries must be an integer >= 0, got {self.max_retries!r}")

    @classmethod
    def from_pretrained(
        cls,
        source,
        *,
        dtype=None,
        device="cpu",
        max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
        trust_remote_code: bool = False,
        max_retries: int = DEFAULT_MAX_RETRIES,
    ) -> Controller:
        """A controller over a transformers chat model (see :meth:`ChatGenerator.from_pretrained`)."""
        generator = ChatGenerator.from_pretrained(
            source,
            dtype=dtype,
            device=device,
            max_new_tokens=max_new_tokens,
            trust_remote_code=trust_remote_code,
        )
        return cls(generator, max_retries=max_retries)

    @staticmethod
    def messages(prompt: str) -> list[Message]:
        """The first call's conversation: instructions, few-shot turns, the prompt."""
        return [
            {"role": "system", "content": CONTROLLER_SYSTEM},
            *few_shot_messages(),
            {"role": "user", "content": USER_TEMPLATE.format(prompt=check_prompt(prompt))},
        ]

    def expected(self, prompt: str) -> Expected:
        """What an image of ``prompt`` must contain.

        Raises:
            PromptError: empty or over-long prompt (before any model call).
            ControllerError: every one of the ``1 + max_retries`` answers failed
                :func:`extract_json` or :meth:`Expected.from_dict`; the message names the last
                failing field and quotes the last answer.
        """
        text = check_prompt(prompt)
        return self._ask(
            self.messages(text), lambda answer: Expected.from_dict(extract_json(answer), prompt=text)
        )

    def layout(self, expected: Expected, detections: dict[str, Sequence]) -> list[tuple[str, Box]]:
        """The corrected layout of an image, as the controller plans it (SLD's LLM step).

        Args:
            expected: what the image must contain.
            detections: phrase -> detections (with ``box`` and ``score``) in the current image.

        Returns:
            The objects the corrected image should show, ``(phrase, box)``: phrases of
            ``expected``, counts as it asks, every relation holding (see :func:`parse_layout`).
            :func:`~selfcorrect.diffusion.plan.plan_from_layout` turns them into edits.

        Raises:
            ControllerError: every one of the ``1 + max_retries`` answers failed
                :func:`parse_layout`.
        """
        return self._ask(
            self.layout_messages(expected, detections), lambda a: parse_layout(extract_json(a), expected)
        )

    @staticmethod
    def layout_messages(expected: Expected, detections: dict[str, Sequence]) -> list[Message]:
        """The layout call's conversation: instructions, one worked example, the case."""
        example_answer = {"objects": [{"phrase": p, "box": list(b)} for p, b in LAYOUT_EXAMPLE[2]]}
        return [
            {"role": "system", "content": LAYOUT_SYSTEM},
            {"role": "user", "content": layout_request(LAYOUT_EXAMPLE[0], LAYOUT_EXAMPLE[1])},
            {"role": "assistant", "content": json.dumps(example_answer)},
            {"role": "user", "content": layout_request(expected, detections)},
        ]

    def _ask(self, messages: list[Message], parse: Callable[[str], Any]):
        """Call the model until ``parse`` accepts its answer, feeding each schema error back;
        at most ``1 + max_retries`` calls, then :class:`ControllerError`."""
        attempts: list[str] = []
        while True:
            answer = self.generate([dict(m) for m in messages])  # copies, so that generate cannot alter ours
            if not isinstance(answer, str):
                raise TypeError(f"generate must return text, got {type(answer).__name__}")
            attempts.append(answer)
            try:
                return parse(answer)
            except ExpectedSchemaError as e:
                error = e
            if len(attempts) > self.max_retries:
                break
            messages += [
                {"role": "assistant", "content": answer},
                {"role": "user", "content": RETRY_TEMPLATE.format(error=error)},
            ]
        shown = answer if len(answer) <= SHOWN_OUTPUT_CHARS else answer[:SHOWN_OUTPUT_CHARS] + "..."
        noun = "attempt" if len(attempts) == 1 else "attempts"
        raise ControllerError(
            f"controller output failed the schema after {len(attempts)} {noun}: {error}; "
            f"last output: {shown!r}",
            attempts,
            error,
        )


@dataclass
class LayoutPlanner:
    """Step 4 of the loop by the controller: it proposes the corrected layout, and
    :func:`~selfcorrect.diffusion.plan.plan_from_layout` turns it into edits.

    Called as the deterministic :func:`~selfcorrect.diffusion.plan.plan` is (and a drop-in for
    it in :func:`~selfcorrect.diffusion.loop.correct`). When every answer fails the schema, it
    falls back to :func:`~selfcorrect.diffusion.plan.plan` for that round, logs a warning and
    records the error in ``fallbacks``: a bad answer costs one round's plan, not the run.
    """

    controller: Controller
    fallbacks: list[str] = field(default_factory=list)
    name = "controller"

    def __call__(self, expected: Expected, detections: dict, failing=None, avoid=()) -> list:
        from selfcorrect.diffusion.plan import plan, plan_from_layout

        try:
            return plan_from_layout(expected, detections, self.controller.layout(expected, detections))
        except ControllerError as e:
            logger.warning("the controller's layout failed (%s); planning this round with the rules", e.error)
            self.fallbacks.append(str(e.error))
            return plan(expected, detections, failing, avoid=avoid)


def layout_request(expected: Expected, detections: dict[str, Sequence]) -> str:
    """The user turn of a layout call: the case as JSON (boxes rounded to 3 decimals)."""
    detected = [
        {"phrase": phrase, "box": [round(v, 3) for v in d.box]}
        for phrase in dict.fromkeys(g.phrase() for g in expected.objects)
        for d in detections.get(phrase, ())
    ]
    case = {
        "prompt": expected.prompt,
        "phrases": list(dict.fromkeys(g.phrase() for g in expected.objects)),
        "expected": expected.to_dict(),
        "detected": detected,
    }
    return json.dumps(case)


def parse_layout(data, expected: Expected) -> list[tuple[str, Box]]:
    """Validate a layout answer ``{"objects": [{"phrase", "box"}, ...]}`` against ``expected``.

    Every phrase must be one of ``expected``'s groups; every box four numbers in [0, 1] with
    ``x0 < x1`` and ``y0 < y1``; each group must have its count (exactly, or at least); and every
    relation must hold between every pair of its groups' boxes
    (:func:`~selfcorrect.diffusion.plan.holds`).

    Raises:
        ExpectedSchemaError: the first problem, naming the field (``objects[2].box``).
    """
    from selfcorrect.diffusion.plan import holds

    if not isinstance(data, dict) or not isinstance(data.get("objects"), list):
        raise ExpectedSchemaError('the answer must be {"objects": [{"phrase": ..., "box": [...]}, ...]}')
    phrases = [g.phrase() for g in expected.objects]
    layout: list[tuple[str, Box]] = []
    for i, item in enumerate(data["objects"]):
        where = f"objects[{i}]"
        if not isinstance(item, dict) or set(item) != {"phrase", "box"}:
            raise ExpectedSchemaError(f'{where}: must be {{"phrase": ..., "box": [x0, y0, x1, y1]}}')
        phrase, box = item["phrase"], item["box"]
        if phrase not in phrases:
            raise ExpectedSchemaError(f"{where}.phrase: {phrase!r} is not one of {phrases}")
        if (
            not isinstance(box, list)
            or len(box) != 4
            or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in box)
        ):
            raise ExpectedSchemaError(f"{where}.box: must be four numbers [x0, y0, x1, y1]")
        x0, y0, x1, y1 = (float(v) for v in box)
        if not (0.0 <= x0 < x1 <= 1.0 and 0.0 <= y0 < y1 <= 1.0):
            raise ExpectedSchemaError(f"{where}.box: {box} must lie in [0, 1] with x0 < x1 and y0 < y1")
        layout.append((phrase, (x0, y0, x1, y1)))
    for group in expected.objects:
        n = sum(p == group.phrase() for p, _ in layout)
        exact = group.exact or group.count == 0
        if (n != group.count) if exact else (n < group.count):
            wanted = ("exactly " if group.exact else "at least ") + str(group.count)
            raise ExpectedSchemaError(
                f"objects: {n} {group.phrase(plural=True)}, the prompt asks for {wanted}"
            )
    for r, rel in enumerate(expected.relations):
        a, b = expected.objects[rel.subject].phrase(), expected.objects[rel.reference].phrase()
        for pa, ba in layout:
            for pb, bb in layout:
                if pa == a and pb == b and not holds(ba, rel.relation, bb):
                    raise ExpectedSchemaError(
                        f"relations[{r}]: the {a} at {list(ba)} is not {rel.relation} the {b} at {list(bb)}"
                    )
    return layout


@dataclass
class ChatGenerator:
    """``generate(messages) -> text`` over a transformers causal LM, greedy and deterministic.

    The conversation is rendered with the tokenizer's own chat template (with the generation
    prompt), decoded greedily (no sampling: the same messages always give the same answer), and
    only the new tokens are returned, special tokens removed and whitespace stripped.

    Attributes:
        model: a transformers ``PreTrainedModel`` with ``generate``.
        tokenizer: its tokenizer; it must have a chat template.
        max_new_tokens: the most tokens per answer (the JSON of a long prompt needs ~200).
        name: where it was loaded from, for messages.
    """

    model: Any
    tokenizer: Any
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS
    name: str = ""

    def __post_init__(self):
        from selfcorrect.vision.vlm import ModelFormatError

        if not getattr(self.tokenizer, "chat_template", None):
            raise ModelFormatError(
                f"{self.name or 'the model'}: its tokenizer has no chat template, so it is not a chat "
                "(instruction-tuned) model. A controller needs one, e.g. an '-Instruct' checkpoint, or "
                "set tokenizer.chat_template yourself"
            )
        if isinstance(self.max_new_tokens, bool) or not isinstance(self.max_new_tokens, int):
            raise ValueError(f"max_new_tokens must be an integer, got {self.max_new_tokens!r}")
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be at least 1, got {self.max_new_tokens}")

    @classmethod
    def from_pretrained(
        cls,
        source,
        *,
        dtype=None,
        device="cpu",
        max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
        trust_remote_code: bool = False,
    ) -> ChatGenerator:
        """Load a chat model (``AutoModelForCausalLM`` + ``AutoTokenizer``) once.

        Args:
            source: a Hugging Face model id or a folder saved with ``save_pretrained``.
            dtype: ``None`` (float32 on CPU, bfloat16 / float16 on CUDA), ``"auto"``, a name
                (``"bfloat16"``) or a ``torch.dtype``.
            device: where the model runs (``"cpu"``, ``"cuda"``, ``"cuda:1"``).
            max_new_tokens: the most tokens per answer.
            trust_remote_code: run code shipped with the checkpoint (off unless asked).

        Raises:
            ModelNotFoundError: the files are not available (offline and not cached, unknown id,
                missing folder); the message says what to download.
            ModelFormatError: the files are unusable (pickle-only weights, not a causal LM,
                mismatched weights, no tokenizer, no chat template); also ``"world"``, whose
                prompts the world grammar parses.
        """
        import transformers

        from selfcorrect.vision.vlm import (
            WORLD,
            ModelFormatError,
            first_line,
            load_checkpoint_config,
            load_weights,
            locate_checkpoint,
            resolve_device,
            resolve_dtype,
        )

        if str(source) == WORLD:
            raise ModelFormatError(
                "the embedded world has no controller model: its prompts are parsed by the world "
                "grammar (Expected.from_requirements(parse_prompt(text))). Pass a chat model for free text"
            )
        torch_device = resolve_device(device)
        torch_dtype = resolve_dtype(dtype, torch_device)
        location = locate_checkpoint(source)
        config = load_checkpoint_config(location, source, trust_remote_code)
        model = load_weights(
            transformers.AutoModelForCausalLM,
            location,
            source,
            config,
            dtype=torch_dtype,
            device=torch_device,
            trust_remote_code=trust_remote_code,
            kind="a causal language model",
        )
        try:
            tokenizer = transformers.AutoTokenizer.from_pretrained(
                location, trust_remote_code=trust_remote_code
            )
        except (OSError, ValueError, TypeError) as e:
            raise ModelFormatError(f"{source}: cannot load its tokenizer: {first_line(e)}") from None
        return cls(model.eval(), tokenizer, max_new_tokens=max_new_tokens, name=str(source))

    def __call__(self, messages: list[Message]) -> str:
        """The model's answer to a conversation (greedy)."""
        import torch

        text = self._render(messages)
        # the template writes the special tokens (BOS, turn markers) itself
        inputs = self.tokenizer(text, add_special_tokens=False, return_tensors="pt")
        n_prompt = inputs["input_ids"].shape[1]
        context = getattr(self.model.config.get_text_config(), "max_position_embeddings", None)
        if context is not None and n_prompt + self.max_new_tokens > context:
            raise PromptError(
                f"the controller conversation is {n_prompt} tokens + {self.max_new_tokens} to generate "
                f"> the model's context of {context}; shorten the prompt or lower max_new_tokens"
            )
        pad_id = self.tokenizer.pad_token_id
        if pad_id is None:
            pad_id = self.tokenizer.eos_token_id
        config = copy.deepcopy(self.model.generation_config)
        # Greedy (temperature 0 equivalent), whatever sampling settings the checkpoint ships. The
        # sampling knobs get transformers' neutral defaults rather than None: generate() refills
        # None from the checkpoint's generation_config and then warns that they are ignored.
        config.update(
            max_new_tokens=self.max_new_tokens,
            do_sample=False,
            num_beams=1,
            temperature=1.0,
            top_p=1.0,
            top_k=50,
            pad_token_id=pad_id,
        )
        inputs = {k: v.to(self.model.device) for k, v in inputs.items()}
        with torch.inference_mode():
            generated = self.model.generate(**inputs, generation_config=config)
        return self.tokenizer.decode(generated[0, n_prompt:], skip_special_tokens=True).strip()

    def _render(self, messages: list[Message]) -> str:
        """The conversation as the model's prompt text, with its generation prompt.

        Some chat templates (Gemma's, Mistral's older ones) refuse a system turn; the instructions
        then go at the top of the first user turn, as those models' own guides do.
        """
        from jinja2 import TemplateError

        try:
            return self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        except TemplateError:
            if not messages or messages[0]["role"] != "system" or len(messages) < 2:
                raise
        system, first, *rest = messages
        merged = {"role": first["role"], "content": f"{system['content']}\n\n{first['content']}"}
        return self.tokenizer.apply_chat_template([merged, *rest], add_generation_prompt=True, tokenize=False)
