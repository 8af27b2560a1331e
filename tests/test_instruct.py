"""Instruct templates: the model's own template is exactly tokenizer.apply_chat_template; the known formats
render as their models expect; a custom template is checked in the sandbox before it can be saved."""

from __future__ import annotations

from pathlib import Path

import pytest

from generators.base import ChatMessage, InvalidOptionsError, SamplingParams, TextRequest
from generators.text.instruct import FORMATS, check_template, render
from generators.text.transformers_lm import TransformersLM

CONVERSATION = (ChatMessage("system", "Be brief."), ChatMessage("user", "Hi there"),
                ChatMessage("assistant", "Hello!"), ChatMessage("user", "Name a colour."))
DICTS = [{"role": m.role, "content": m.content} for m in CONVERSATION]


@pytest.fixture(scope="module")
def tiny_lm(tiny_model_dir: Path) -> TransformersLM:
    gen = TransformersLM("tiny", {"source": str(tiny_model_dir), "device": "cpu"})
    gen.load()
    yield gen
    gen.unload()


def test_the_models_own_template_is_apply_chat_template(tiny_lm: TransformersLM) -> None:
    rendered = tiny_lm.render_prompt(TextRequest(messages=CONVERSATION, params=SamplingParams(max_new_tokens=8)))
    expected = tiny_lm.tokenizer.apply_chat_template(DICTS, tokenize=False, add_generation_prompt=True)
    assert rendered.text == expected and "<|im_start|>assistant" in expected
    assert rendered.tokens == len(tiny_lm.tokenizer.encode(expected, add_special_tokens=False))
    assert rendered.dropped_messages == 0


def test_a_chosen_format_replaces_the_models_template(tiny_lm: TransformersLM) -> None:
    llama3 = FORMATS["Llama 3"].source
    request = TextRequest(messages=CONVERSATION, params=SamplingParams(max_new_tokens=8), template=llama3)
    rendered = tiny_lm.render_prompt(request)
    assert rendered.text == tiny_lm.tokenizer.apply_chat_template(DICTS, chat_template=llama3, tokenize=False,
                                                                  add_generation_prompt=True)
    assert rendered.text.endswith("<|start_header_id|>assistant<|end_header_id|>\n\n")
    assert rendered.text.startswith(tiny_lm.tokenizer.bos_token + "<|start_header_id|>system")  # this model's BOS
    assert "<|im_start|>user" not in rendered.text
    _, last = tiny_lm.generate(TextRequest(messages=CONVERSATION, params=SamplingParams(max_new_tokens=3, seed=1),
                                           template=llama3))
    assert last.stats is not None and last.stats.prompt_tokens == rendered.tokens  # what was sent is what was shown


@pytest.mark.parametrize("template", [None, "Llama 3"], ids=["own-template", "chosen-format"])
def test_a_continued_turn_stays_open_for_the_model_to_write_on(tiny_lm: TransformersLM, template: str | None) -> None:
    """continue_turn: the last assistant message is the start of the model's own turn — no end-of-turn after
    it and no new turn opened — so the model writes on (what the Story workspace sends an instruct model)."""
    source = FORMATS[template].source if template else None
    story = (ChatMessage("system", "Write fiction."), ChatMessage("user", "Write the story."),
             ChatMessage("assistant", "The door creaked open and"))
    request = TextRequest(messages=story, params=SamplingParams(max_new_tokens=8), template=source, continue_turn=True)
    rendered = tiny_lm.render_prompt(request)
    assert rendered.text.endswith("The door creaked open and")
    closed = tiny_lm.render_prompt(TextRequest(messages=story, params=SamplingParams(max_new_tokens=8), template=source))
    assert closed.text.startswith(rendered.text) and len(closed.text) > len(rendered.text)  # the usual render closes it
    _, last = tiny_lm.generate(request)
    assert last.stats is not None and last.stats.prompt_tokens == rendered.tokens
    with pytest.raises(InvalidOptionsError, match="end with the assistant"):
        TextRequest(messages=story[:2], continue_turn=True)


@pytest.mark.parametrize("name, expected", [
    ("ChatML", "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi there<|im_end|>\n<|im_start|>assistant\n"
               "Hello!<|im_end|>\n<|im_start|>user\nName a colour.<|im_end|>\n<|im_start|>assistant\n"),
    ("Llama 3", "<s><|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|><|start_header_id|>user"
                "<|end_header_id|>\n\nHi there<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\nHello!<|eot_id|>"
                "<|start_header_id|>user<|end_header_id|>\n\nName a colour.<|eot_id|><|start_header_id|>assistant"
                "<|end_header_id|>\n\n"),
    ("Mistral", "<s>[INST] Be brief.\n\nHi there [/INST] Hello!</s>[INST] Name a colour. [/INST]"),
    ("Gemma", "<s><start_of_turn>user\nBe brief.\n\nHi there<end_of_turn>\n<start_of_turn>model\nHello!<end_of_turn>\n"
              "<start_of_turn>user\nName a colour.<end_of_turn>\n<start_of_turn>model\n"),
    ("Alpaca", "Be brief.\n\n### Instruction:\nHi there\n\n### Response:\nHello!\n\n### Instruction:\nName a colour.\n\n"
               "### Response:\n"),
    ("Vicuna", "Be brief.\n\nUSER: Hi there\nASSISTANT: Hello!</s>\nUSER: Name a colour.\nASSISTANT:"),
])
def test_the_known_formats(name: str, expected: str) -> None:
    assert render(FORMATS[name].source, DICTS, bos_token="<s>", eos_token="</s>") == expected
    check_template(FORMATS[name].source)  # each passes the check a custom one must pass


@pytest.mark.parametrize("source, words", [
    ("", "empty"),
    ("{% for m in messages %}{{ m['content'] }}", "does not compile"),
    ("{{ messages[0].__class__.__mro__ }}", "fails on a sample conversation"),  # the sandbox refuses
    ("{{ raise_exception('no system role') }}", "no system role"),
    ("{% for m in messages %}{{ m['role'] }}{% endfor %}", "leaves out message text"),
    ("{% for i in range(99999) %}{% for j in range(99999) %}x{% endfor %}{% endfor %}", "within"),
    ("x" * 20_001, "limit"),
])
def test_a_custom_template_is_checked_before_it_is_saved(source: str, words: str) -> None:
    with pytest.raises(InvalidOptionsError, match=words):
        check_template(source)
