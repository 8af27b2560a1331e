"""A request's messages or prompt as token ids that fit the model's context window."""

from __future__ import annotations

from typing import Any

from ...base import ChatMessage, InvalidOptionsError, TextRequest


def has_chat_template(tokenizer: Any) -> bool:
    return bool(tokenizer is not None and getattr(tokenizer, "chat_template", None))


def chat_ids(tokenizer: Any, messages: list[ChatMessage], template: str | None = None,
             continue_turn: bool = False) -> list[int]:
    """Messages through `template` (a Jinja chat template), else the tokenizer's own chat template, or as
    a plain transcript for a base model. `continue_turn`: the last (assistant) message is left open for the
    model to continue, with no end-of-turn after it and no new turn opened."""
    dicts = [{"role": m.role, "content": m.content} for m in messages]
    if template or has_chat_template(tokenizer):
        text = tokenizer.apply_chat_template(dicts, chat_template=template or None, tokenize=False,
                                             add_generation_prompt=not continue_turn,
                                             continue_final_message=continue_turn)
        return tokenizer.encode(text, add_special_tokens=False)
    # A base model has no template: a plain transcript it can continue.
    if continue_turn:
        text = "".join(f"{d['role'].capitalize()}: {d['content']}\n" for d in dicts[:-1])
        text += f"Assistant: {dicts[-1]['content']}"
    else:
        text = "".join(f"{d['role'].capitalize()}: {d['content']}\n" for d in dicts) + "Assistant:"
    return tokenizer.encode(text, add_special_tokens=True)


def fit_prompt(tokenizer: Any, request: TextRequest, context_window: int) -> tuple[list[int], int]:
    """Token ids of the prompt and how many of the oldest messages were dropped to fit
    `context_window` minus the reply's `max_new_tokens`. A raw prompt keeps its end (what the model
    continues); a chat keeps its system messages and newest turn."""
    budget = context_window - request.params.max_new_tokens
    if budget < 1:
        raise InvalidOptionsError(
            f"max_new_tokens={request.params.max_new_tokens} leaves no room for the prompt in this model's "
            f"context window of {context_window} tokens. Lower max_new_tokens."
        )
    if request.prompt is not None:
        ids = tokenizer.encode(request.prompt, add_special_tokens=True)
        return (ids[-budget:], 0) if len(ids) > budget else (ids, 0)
    messages = list(request.messages)
    system = [m for m in messages if m.role == "system"]
    turns = [m for m in messages if m.role != "system"]
    if not turns and system:  # only instructions (OpenAI answers those): the last one is what is answered
        system, turns = system[:-1], [ChatMessage("user", system[-1].content)]
    if not turns:
        raise InvalidOptionsError("There is no user message to reply to.")

    def ids_for(dropped: int) -> list[int]:
        return chat_ids(tokenizer, system + turns[dropped:], request.template, request.continue_turn)

    ids = ids_for(0)
    if len(ids) <= budget:
        return ids, 0
    # Fewest oldest turns to drop (monotonic, so binary search); the newest turn is kept.
    lo, hi = 1, len(turns) - 1
    if hi < lo or len(ids_for(hi)) > budget:
        last = len(ids_for(len(turns) - 1))
        raise InvalidOptionsError(
            f"The message is too long for this model: it needs {last} tokens but only {budget} fit "
            f"(context window {context_window} minus max_new_tokens {request.params.max_new_tokens}). "
            "Shorten the message or lower max_new_tokens."
        )
    while lo < hi:
        mid = (lo + hi) // 2
        if len(ids_for(mid)) <= budget:
            hi = mid
        else:
            lo = mid + 1
    return ids_for(lo), lo
