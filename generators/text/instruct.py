"""Instruct templates: how a conversation becomes the text an instruct model reads.

By default a model uses its own chat template (from its tokenizer). A person can override it with a known
format — ChatML, Llama 3, Mistral, Gemma, Alpaca, Vicuna — or a Jinja template of their own, written the way
Hugging Face chat templates are (`messages`, `add_generation_prompt`, `bos_token`, `eos_token`,
`raise_exception`). Templates render in Jinja's immutable sandbox, as transformers renders them; a custom one
is checked before it is saved: it must compile, render a sample conversation in a separate process within a
time limit (a template is code: a runaway loop must not hang the server), and show every turn.
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass
from typing import Any

from ..base import InvalidOptionsError

MAX_TEMPLATE_CHARS = 20_000
MAX_RENDERED_CHARS = 200_000
CHECK_TIMEOUT_S = 5.0


@dataclass(frozen=True)
class InstructFormat:
    name: str
    source: str  # a Jinja chat template
    stops: tuple[str, ...]  # text that ends a reply in this format (added to the request's stop strings)


_CHATML = ("{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + "
           "'<|im_end|>' + '\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")
_LLAMA3 = ("{{ bos_token }}{% for message in messages %}{{ '<|start_header_id|>' + message['role'] + "
           "'<|end_header_id|>\\n\\n' + message['content'] | trim + '<|eot_id|>' }}{% endfor %}"
           "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}")
# Mistral and Gemma have no system role: the system text opens the next user turn.
_MISTRAL = ("{{ bos_token }}{% set ns = namespace(system='') %}{% for message in messages %}"
            "{% if message['role'] == 'system' %}{% set ns.system = ns.system + message['content'] + '\\n\\n' %}"
            "{% elif message['role'] == 'user' %}{{ '[INST] ' + ns.system + message['content'] + ' [/INST]' }}"
            "{% set ns.system = '' %}{% else %}{{ ' ' + message['content'] + eos_token }}{% endif %}{% endfor %}")
_GEMMA = ("{{ bos_token }}{% set ns = namespace(system='') %}{% for message in messages %}"
          "{% if message['role'] == 'system' %}{% set ns.system = ns.system + message['content'] + '\\n\\n' %}"
          "{% elif message['role'] == 'user' %}{{ '<start_of_turn>user\\n' + ns.system + message['content'] | trim + "
          "'<end_of_turn>\\n' }}{% set ns.system = '' %}{% else %}{{ '<start_of_turn>model\\n' + "
          "message['content'] | trim + '<end_of_turn>\\n' }}{% endif %}{% endfor %}"
          "{% if add_generation_prompt %}{{ '<start_of_turn>model\\n' }}{% endif %}")
_ALPACA = ("{% for message in messages %}{% if message['role'] == 'system' %}{{ message['content'] + '\\n\\n' }}"
           "{% elif message['role'] == 'user' %}{{ '### Instruction:\\n' + message['content'] + '\\n\\n' }}"
           "{% else %}{{ '### Response:\\n' + message['content'] + '\\n\\n' }}{% endif %}{% endfor %}"
           "{% if add_generation_prompt %}{{ '### Response:\\n' }}{% endif %}")
_VICUNA = ("{% for message in messages %}{% if message['role'] == 'system' %}{{ message['content'] + '\\n\\n' }}"
           "{% elif message['role'] == 'user' %}{{ 'USER: ' + message['content'] + '\\n' }}"
           "{% else %}{{ 'ASSISTANT: ' + message['content'] + eos_token + '\\n' }}{% endif %}{% endfor %}"
           "{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}")

FORMATS: dict[str, InstructFormat] = {f.name: f for f in (
    InstructFormat("ChatML", _CHATML, ("<|im_end|>", "<|im_start|>")),
    InstructFormat("Llama 3", _LLAMA3, ("<|eot_id|>", "<|start_header_id|>")),
    InstructFormat("Mistral", _MISTRAL, ("[INST]",)),
    InstructFormat("Gemma", _GEMMA, ("<end_of_turn>", "<start_of_turn>")),
    InstructFormat("Alpaca", _ALPACA, ("### Instruction:", "### Response:")),
    InstructFormat("Vicuna", _VICUNA, ("USER:",)),
)}


def sandbox() -> Any:
    """Jinja's immutable sandbox configured as transformers configures it for chat templates."""
    from jinja2.exceptions import TemplateError
    from jinja2.ext import loopcontrols
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message: str) -> None:
        raise TemplateError(message)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])
    env.globals["raise_exception"] = raise_exception
    return env


def render(source: str, messages: list[dict[str, str]], *, add_generation_prompt: bool = True,
           bos_token: str = "", eos_token: str = "") -> str:
    """The template applied to `messages` ([{"role", "content"}]) in the sandbox."""
    return sandbox().from_string(source).render(messages=messages, add_generation_prompt=add_generation_prompt,
                                                bos_token=bos_token, eos_token=eos_token)


SAMPLE = [{"role": "system", "content": "SYSTEM-TEXT-1"}, {"role": "user", "content": "USER-TEXT-2"},
          {"role": "assistant", "content": "ASSISTANT-TEXT-3"}, {"role": "user", "content": "USER-TEXT-4"}]

_CHILD = """
import json, sys
from generators.text.instruct import render, SAMPLE
source = sys.stdin.read()
try:
    out = render(source, SAMPLE, bos_token="<s>", eos_token="</s>")
    print(json.dumps({"ok": out[:%d], "chars": len(out)}))
except Exception as exc:
    line = getattr(exc, "lineno", None)
    print(json.dumps({"error": f"{type(exc).__name__}: {exc}", "line": line}))
""" % (MAX_RENDERED_CHARS + 1)


def check_template(source: Any) -> str:
    """The template if it is one a person may save; otherwise InvalidOptionsError saying what is wrong."""
    if not isinstance(source, str) or not source.strip():
        raise InvalidOptionsError("The template is empty: write a Jinja chat template (it gets `messages`, "
                                  "`add_generation_prompt`, `bos_token` and `eos_token`).")
    if len(source) > MAX_TEMPLATE_CHARS:
        raise InvalidOptionsError(f"The template is {len(source):,} characters long; the limit is {MAX_TEMPLATE_CHARS:,}.")
    from jinja2.exceptions import TemplateSyntaxError

    try:
        sandbox().parse(source)
    except TemplateSyntaxError as exc:
        raise InvalidOptionsError(f"The template does not compile (line {exc.lineno}): {exc.message}") from None
    try:
        done = subprocess.run([sys.executable, "-c", _CHILD], input=source, capture_output=True, text=True,
                              timeout=CHECK_TIMEOUT_S, cwd=_root())
    except subprocess.TimeoutExpired:
        raise InvalidOptionsError(f"The template did not finish rendering a four-message conversation within "
                                  f"{CHECK_TIMEOUT_S:.0f} s (a runaway loop?).") from None
    try:
        result = json.loads(done.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        raise InvalidOptionsError("The template could not be checked (the renderer stopped: "
                                  f"{done.stderr.strip()[-200:] or 'no output'}).") from None
    if "error" in result:
        where = f" (line {result['line']})" if result.get("line") else ""
        raise InvalidOptionsError(f"The template fails on a sample conversation{where}: {result['error'][:300]}")
    if result["chars"] > MAX_RENDERED_CHARS:
        raise InvalidOptionsError(f"The template turns a four-message conversation into {result['chars']:,}+ "
                                  "characters; it must render the messages, not generate text.")
    missing = [m["role"] for m in SAMPLE[1:] if m["content"] not in result["ok"]]
    if missing:
        raise InvalidOptionsError("The template leaves out message text (" + ", ".join(missing) + "): render each "
                                  "message's `content`, e.g. {% for message in messages %}{{ message['content'] }}"
                                  "{% endfor %}.")
    return source


def _root() -> str:
    from pathlib import Path

    return str(Path(__file__).resolve().parents[2])
