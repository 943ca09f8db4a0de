"""The controller: prompt -> validated Expected, with bounded retries.

Canned answers test extraction, validation and the retry conversation without a model; a tiny
random-initialised ``LlamaForCausalLM`` with a locally built tokenizer, saved and loaded back
through ``Controller.from_pretrained``, tests the transformers path (its answers are garbage, so
it must fail cleanly after the allowed attempts).
"""

import json

import pytest

from selfcorrect.diffusion.controller import (
    CONTROLLER_SYSTEM,
    FEW_SHOT,
    LAYOUT_EXAMPLE,
    ChatGenerator,
    Controller,
    ControllerError,
    LayoutPlanner,
    extract_json,
    few_shot_messages,
    parse_layout,
)
from selfcorrect.diffusion.expected import RELATIONS, Expected, ExpectedObject, ExpectedSchemaError
from selfcorrect.errors import PromptError, SelfcorrectError
from selfcorrect.vision.testing import build_tokenizer
from selfcorrect.vision.vlm import ModelFormatError, ModelNotFoundError

VALID = {
    "objects": [
        {"noun": "circle", "attributes": ["red"], "count": 2, "exact": True},
        {"noun": "square", "attributes": ["blue"], "count": 1, "exact": False},
    ],
    "relations": [{"subject": 0, "relation": "left of", "reference": 1}],
    "background": "",
}
VALID_TEXT = json.dumps(VALID)
BAD_COUNT = json.dumps({"objects": [{"noun": "circle", "attributes": [], "count": 99, "exact": True}]})
PROMPT = "two red circles to the left of a blue square"

CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


class Canned:
    """A fake ``generate`` that returns the given answers in turn and records every call."""

    def __init__(self, *answers: str):
        self.answers = list(answers)
        self.calls: list[list[dict]] = []

    def __call__(self, messages):
        self.calls.append(messages)
        return self.answers[min(len(self.calls), len(self.answers)) - 1]


# ----------------------------------------------------------------------------- canned answers


def test_valid_first_try():
    generate = Canned(VALID_TEXT)
    expected = Controller(generate).expected(PROMPT)
    assert len(generate.calls) == 1
    assert expected == Expected.from_dict(VALID)
    assert expected.prompt == PROMPT
    assert expected.objects[0] == ExpectedObject("circle", ("red",), 2, True)
    messages = generate.calls[0]
    assert messages[0] == {"role": "system", "content": CONTROLLER_SYSTEM}
    assert messages[1:-1] == few_shot_messages()
    assert messages[-1]["role"] == "user" and PROMPT in messages[-1]["content"]


@pytest.mark.parametrize(
    "answer",
    [
        f"```json\n{VALID_TEXT}\n```",
        f"```\n{json.dumps(VALID, indent=2)}\n```",
        f"Sure! Here is the JSON you asked for:\n{VALID_TEXT}\nLet me know if you need more.",
        f'Objects {{like this}} are listed below.\n{VALID_TEXT} and {{"another": 1}}',
    ],
    ids=["fenced", "bare-fence", "prose", "prose-with-braces"],
)
def test_wrapped_json_is_found(answer):
    generate = Canned(answer)
    assert Controller(generate).expected(PROMPT) == Expected.from_dict(VALID)
    assert len(generate.calls) == 1


def test_extract_json_cases():
    assert extract_json(VALID_TEXT) == VALID
    # a brace inside a JSON string does not unbalance the scan
    assert extract_json('say {"background": "a } and { room", "objects": []} ok') == {
        "background": "a } and { room",
        "objects": [],
    }
    # a rejected outer candidate does not yield its inner object
    with pytest.raises(ExpectedSchemaError, match="not valid JSON"):
        extract_json('{"objects": [{"noun": "cat"}], oops}')
    with pytest.raises(ExpectedSchemaError, match="empty"):
        extract_json("  \n")
    with pytest.raises(ExpectedSchemaError, match="no JSON object"):
        extract_json("I cannot help with that.")
    with pytest.raises(ExpectedSchemaError, match="never closed"):
        extract_json('{"objects": [{"noun": "cat", "count": 1')
    with pytest.raises(ExpectedSchemaError, match="got a JSON list"):
        extract_json(json.dumps([VALID]))
    with pytest.raises(ExpectedSchemaError, match="not valid JSON"):
        extract_json("{'objects': []}")  # Python literal, not JSON: not repaired


def test_invalid_then_valid_sends_the_error_back():
    generate = Canned(BAD_COUNT, VALID_TEXT)
    expected = Controller(generate).expected(PROMPT)
    assert expected == Expected.from_dict(VALID)
    assert len(generate.calls) == 2
    first, second = generate.calls
    assert second[: len(first)] == first
    assert second[len(first)] == {"role": "assistant", "content": BAD_COUNT}
    retry = second[len(first) + 1]
    assert retry["role"] == "user"
    assert "objects[0].count: an integer from 0 to 8 is required" in retry["content"]
    assert "JSON object only" in retry["content"]


@pytest.mark.parametrize("max_retries", [0, 2, 4])
def test_always_invalid_raises_after_bounded_attempts(max_retries):
    generate = Canned(BAD_COUNT)
    with pytest.raises(ControllerError) as info:
        Controller(generate, max_retries=max_retries).expected(PROMPT)
    err = info.value
    assert len(generate.calls) == 1 + max_retries
    assert err.attempts == [BAD_COUNT] * (1 + max_retries)
    assert isinstance(err.error, ExpectedSchemaError)
    assert isinstance(err, SelfcorrectError)
    message = str(err)
    assert f"failed the schema after {1 + max_retries} attempt" in message
    assert "objects[0].count" in message
    assert "last output" in message and "99" in message


def test_not_json_at_all():
    generate = Canned("I'd love to help, but I'm not sure what you mean.")
    with pytest.raises(ControllerError, match="after 3 attempts: no JSON object") as info:
        Controller(generate).expected(PROMPT)
    assert len(info.value.attempts) == 3


def test_long_garbage_is_truncated_in_the_message():
    generate = Canned("x" * 5000)
    with pytest.raises(ControllerError) as info:
        Controller(generate, max_retries=0).expected(PROMPT)
    assert len(str(info.value)) < 600
    assert info.value.attempts == ["x" * 5000]  # the full answer is kept


@pytest.mark.parametrize("prompt", ["", "   \n", "x" * 5000])
def test_bad_prompt_fails_before_any_call(prompt):
    generate = Canned(VALID_TEXT)
    with pytest.raises(PromptError):
        Controller(generate).expected(prompt)
    assert generate.calls == []


def test_generate_errors_propagate_without_retry():
    calls = []

    def broken(messages):
        calls.append(messages)
        raise RuntimeError("CUDA out of memory")

    with pytest.raises(RuntimeError, match="out of memory"):
        Controller(broken).expected(PROMPT)
    assert len(calls) == 1


def test_constructor_checks():
    with pytest.raises(ValueError, match="max_retries"):
        Controller(Canned(VALID_TEXT), max_retries=-1)
    with pytest.raises(TypeError):
        Controller("not callable")


def test_few_shot_examples_satisfy_the_validator():
    assert len(FEW_SHOT) >= 2
    turns = few_shot_messages()
    assert [m["role"] for m in turns] == ["user", "assistant"] * len(FEW_SHOT)
    for (prompt, answer), user, assistant in zip(FEW_SHOT, turns[::2], turns[1::2], strict=True):
        assert prompt in user["content"]
        data = json.loads(assistant["content"])
        parsed = Expected.from_dict(data)
        assert parsed == answer
        assert parsed.to_dict() == data
        # the canned-answer path accepts them too
        assert Controller(Canned(assistant["content"])).expected(prompt) == answer
    # the examples show negation, an exact count and a relation
    objects = [o for _, e in FEW_SHOT for o in e.objects]
    assert any(o.count == 0 and o.exact for o in objects)
    assert any(o.count > 1 and o.exact for o in objects)
    assert any(e.relations for _, e in FEW_SHOT)


def test_system_prompt_names_the_schema():
    for word in ("noun", "attributes", "count", "exact", "relations", "subject", "reference", "background"):
        assert f'"{word}"' in CONTROLLER_SYSTEM
    for relation in RELATIONS:
        assert f'"{relation}"' in CONTROLLER_SYSTEM
    assert "JSON object only" in CONTROLLER_SYSTEM


# --------------------------------------------------------------------- tiny transformers model


def _tiny_chat_model(path, *, chat_template: str | None = CHAT_TEMPLATE):
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = build_tokenizer(
        ["<|endoftext|>", "<|im_start|>", "<|im_end|>"], eos_token="<|im_end|>", pad_token="<|endoftext|>"
    )
    if chat_template is not None:
        tokenizer.chat_template = chat_template
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=16384,  # the byte-level tokenizer makes the few-shot prompt long
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=None,
    )
    import torch

    torch.manual_seed(0)
    model = LlamaForCausalLM(config).eval()
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    # sampling settings a real instruct checkpoint ships: greedy decoding must override them
    model.generation_config.do_sample = True
    model.generation_config.temperature = 0.7
    model.generation_config.top_p = 0.9
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def tiny_path(tmp_path_factory):
    return _tiny_chat_model(tmp_path_factory.mktemp("tiny-controller") / "model")


def test_tiny_model_fails_cleanly_within_bounded_attempts(tiny_path):
    controller = Controller.from_pretrained(tiny_path, max_new_tokens=8, max_retries=2)
    assert isinstance(controller.generate, ChatGenerator)
    assert controller.generate.name == str(tiny_path)
    with pytest.raises(ControllerError, match="after 3 attempts") as info:
        controller.expected(PROMPT)
    assert len(info.value.attempts) == 3
    assert all(isinstance(a, str) for a in info.value.attempts)


def test_tiny_model_is_greedy_and_deterministic(tiny_path):
    controller = Controller.from_pretrained(tiny_path, max_new_tokens=8)
    messages = controller.messages(PROMPT)
    first = controller.generate(messages)
    assert controller.generate(messages) == first
    # only new tokens come back: no trace of the prompt's template
    assert "<|im_start|>" not in first and "Prompt:" not in first
    # the checkpoint ships do_sample=True; the answer is plain greedy decoding anyway
    generator = controller.generate
    text = generator.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    ids = generator.tokenizer(text, add_special_tokens=False, return_tensors="pt")["input_ids"]
    reference = generator.model.generate(
        ids, attention_mask=ids.new_ones(ids.shape), do_sample=False, max_new_tokens=8
    )
    assert first == generator.tokenizer.decode(reference[0, ids.shape[1] :], skip_special_tokens=True).strip()


def test_template_without_system_role_gets_instructions_in_the_first_user_turn(tiny_path):
    controller = Controller.from_pretrained(tiny_path, max_new_tokens=8)
    tokenizer = controller.generate.tokenizer
    plain = tokenizer.chat_template
    tokenizer.chat_template = (
        "{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}"
        "{% endif %}" + plain
    )
    try:
        messages = controller.messages(PROMPT)
        text = controller.generate._render(messages)
        assert text.startswith("<|im_start|>user\n" + CONTROLLER_SYSTEM + "\n\nPrompt: ")
        assert isinstance(controller.generate(messages), str)
    finally:
        tokenizer.chat_template = plain


def test_context_overflow_is_a_prompt_error(tiny_path):
    controller = Controller.from_pretrained(tiny_path, max_new_tokens=20000)
    with pytest.raises(PromptError, match="context of 16384"):
        controller.expected(PROMPT)


def test_tokenizer_without_chat_template_is_refused(tmp_path):
    path = _tiny_chat_model(tmp_path / "no-template", chat_template=None)
    with pytest.raises(ModelFormatError, match="no chat template"):
        Controller.from_pretrained(path)


def test_missing_model_is_a_clear_error(tmp_path):
    with pytest.raises(ModelNotFoundError):
        Controller.from_pretrained(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelNotFoundError, match="config.json"):
        Controller.from_pretrained(tmp_path / "empty")
    with pytest.raises(ModelNotFoundError):
        Controller.from_pretrained("nobody-has/this-controller-model")  # offline in tests
    with pytest.raises(ModelFormatError, match="world grammar"):
        Controller.from_pretrained("world")


def test_folder_without_weights_is_a_clear_error(tiny_path, tmp_path):
    import shutil

    path = tmp_path / "no-weights"
    shutil.copytree(tiny_path, path)
    for weights in path.glob("*.safetensors"):
        weights.unlink()
    with pytest.raises(ModelNotFoundError, match="no weights"):
        Controller.from_pretrained(path)


# ------------------------------------------------------------------------------------ layouts

LAYOUT_EXPECTED = Expected.from_dict(VALID, prompt=PROMPT)  # two red circles left of a blue square
GOOD_LAYOUT = [
    ("red circle", (0.05, 0.1, 0.25, 0.3)),
    ("red circle", (0.05, 0.6, 0.25, 0.8)),
    ("blue square", (0.6, 0.35, 0.85, 0.6)),
]


def _layout_text(layout) -> str:
    return json.dumps({"objects": [{"phrase": p, "box": list(b)} for p, b in layout]})


def test_layout_example_and_a_good_layout_pass_the_validator():
    expected, detections, answer = LAYOUT_EXAMPLE
    assert parse_layout(json.loads(_layout_text(answer)), expected) == answer
    assert detections["red circle"][0].box == answer[0][1]  # the example keeps what is right
    assert parse_layout(json.loads(_layout_text(GOOD_LAYOUT)), LAYOUT_EXPECTED) == GOOD_LAYOUT


@pytest.mark.parametrize(
    "layout, message",
    [
        (GOOD_LAYOUT[:2], "0 blue squares, the prompt asks for at least 1"),
        (
            GOOD_LAYOUT + [("red circle", (0.05, 0.35, 0.2, 0.5))],
            "3 red circles, the prompt asks for exactly 2",
        ),
        ([("green circle", (0.1, 0.1, 0.2, 0.2))], "objects\\[0\\].phrase: 'green circle' is not one of"),
        ([("red circle", (0.3, 0.1, 0.2, 0.2))], "objects\\[0\\].box: .* x0 < x1"),
        ([("red circle", (0.1, 0.1, 0.2, 1.5))], "objects\\[0\\].box"),
        (
            [GOOD_LAYOUT[0], ("red circle", (0.7, 0.7, 0.9, 0.9)), GOOD_LAYOUT[2]],
            "relations\\[0\\]: the red circle at \\[0.7, 0.7, 0.9, 0.9\\] is not left of",
        ),
    ],
)
def test_bad_layouts_name_the_problem(layout, message):
    with pytest.raises(ExpectedSchemaError, match=message):
        parse_layout(json.loads(_layout_text(layout)), LAYOUT_EXPECTED)


def test_layout_shapes_that_are_not_the_schema():
    for data in (
        [],
        {"objects": "x"},
        {"objects": [{"phrase": "red circle"}]},
        {"objects": [{"phrase": "red circle", "box": [0, 0, 1]}]},
    ):
        with pytest.raises(ExpectedSchemaError):
            parse_layout(data, LAYOUT_EXPECTED)


def test_layout_call_sends_the_case_and_retries_with_the_error():
    from selfcorrect.vision.detectors import Detection

    found = {"red circle": [Detection("red circle", (0.05, 0.1, 0.25, 0.3), 0.9)]}
    canned = Canned(_layout_text(GOOD_LAYOUT[:2]), "```json\n" + _layout_text(GOOD_LAYOUT) + "\n```")
    assert Controller(canned).layout(LAYOUT_EXPECTED, found) == GOOD_LAYOUT
    first, second = canned.calls
    case = json.loads(first[-1]["content"])
    assert case["phrases"] == ["red circle", "blue square"] and case["prompt"] == PROMPT
    assert case["detected"] == [{"phrase": "red circle", "box": [0.05, 0.1, 0.25, 0.3]}]
    assert [m["role"] for m in first] == ["system", "user", "assistant", "user"]
    assert "0 blue squares" in second[-1]["content"] and second[-2]["role"] == "assistant"


def test_layout_planner_plans_from_the_layout_and_falls_back_to_the_rules():
    from selfcorrect.diffusion.plan import plan
    from selfcorrect.vision.detectors import Detection

    found = {"red circle": [Detection("red circle", (0.05, 0.1, 0.25, 0.3), 0.9)], "blue square": []}
    planner = LayoutPlanner(Controller(Canned(_layout_text(GOOD_LAYOUT))))
    ops = planner(LAYOUT_EXPECTED, found)
    assert [(op.kind, op.phrase, op.target) for op in ops] == [
        ("add", "red circle", GOOD_LAYOUT[1][1]),
        ("add", "blue square", GOOD_LAYOUT[2][1]),
    ]
    broken = LayoutPlanner(Controller(Canned("no idea"), max_retries=1))
    assert broken(LAYOUT_EXPECTED, found, None) == plan(LAYOUT_EXPECTED, found, None)
    assert len(broken.fallbacks) == 1 and "no JSON object" in broken.fallbacks[0]
