"""The OpenAI wire format: request models, the errors OpenAI answers bad requests with, response bodies.

The OpenAI API reference (chat completions, completions) is the specification:
- what it accepts, these models accept — `null` for an optional field means its default, `stop` is a
  string or a list, `content` is a string or a list of parts, `seed` is any integer;
- what it refuses, they refuse with OpenAI's error shape: `{"error": {message, type, param, code}}`,
  `param` naming the field (`messages[0].content[1].type`) and `code` saying why (`invalid_type`,
  `decimal_above_max_value`, `missing_required_parameter`, …).

Fields OpenAI knows but the studio cannot act on (`tools`, `response_format`, `user`, `metadata`, …)
and unknown fields are accepted and ignored, as vLLM and llama.cpp's server do, so existing clients
keep working; `logit_bias` is applied by the models that declare they can (token ids checked against the
model's vocabulary); `top_k`, `min_p` and `repetition_penalty` are the usual local-server extensions, and
`typical_p`, `dry_multiplier`/`dry_base`/`dry_allowed_length`/`dry_sequence_breakers` and
`xtc_threshold`/`xtc_probability` those of text-generation-webui and koboldcpp (the OpenAI client sends them
through `extra_body`).
Numbers and booleans are strict: `"0.5"` where a number belongs is refused, as OpenAI does.
"""

from __future__ import annotations

import time
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from generators.base import MAX_LOGIT_BIAS, InvalidOptionsError, StudioError

SEED_SPACE = 2**32  # the studio's seeds are 32-bit; any integer maps onto one (seed mod 2**32)
MAX_CHOICES = 128  # OpenAI's bound for `n`


# ---------------------------------------------------------------- errors


class RequestError(InvalidOptionsError):
    """A refused request, as OpenAI words it: 400, `invalid_request_error`, the field and a code."""

    def __init__(self, message: str, param: str | None = None, code: str | None = "invalid_value") -> None:
        super().__init__(message)
        self.param = param
        self.openai_code = code


JSON_TYPES = {str: "a string", bool: "a boolean", int: "an integer", float: "a decimal", list: "an array",
              dict: "an object", type(None): "null"}
DECIMAL_FIELDS = {"temperature", "top_p", "presence_penalty", "frequency_penalty", "min_p", "repetition_penalty",
                  "typical_p", "dry_multiplier", "dry_base", "xtc_threshold", "xtc_probability"}
EXPECTED = {  # pydantic error type → what OpenAI says it expected
    "float_type": "a decimal", "int_type": "an integer", "int_from_float": "an integer", "string_type": "a string",
    "bool_type": "a boolean", "list_type": "an array", "dict_type": "an object", "model_type": "an object",
    "model_attributes_type": "an object", "tuple_type": "an array",
}


def param_path(loc: tuple[Any, ...]) -> str:
    """('messages', 0, 'content', 1, 'type') → 'messages[0].content[1].type' (union branch tags dropped)."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif isinstance(part, str) and ("[" in part or part in ("str", "list", "function-after", "function-before")):
            continue  # pydantic's name of a union member, not a field
        else:
            out += f".{part}" if out else str(part)
    return out


def _number(value: Any) -> str:
    return str(int(value)) if isinstance(value, float) and value.is_integer() else str(value)


def translate_validation_error(exc: ValidationError) -> RequestError:
    """The first problem of a pydantic error, in OpenAI's words."""
    errors = exc.errors(include_url=False)
    # A union (content, stop, prompt) reports one error per branch: the deepest one is about the branch the
    # value was meant for (a list part of the wrong type, not "expected a string"); at equal depth, the
    # branch whose type matched and whose value broke a rule.
    err = max(errors, key=lambda e: (len(e["loc"]), e["type"] not in EXPECTED))
    kind, loc, ctx, value = err["type"], err["loc"], err.get("ctx") or {}, err.get("input")
    param = param_path(loc) or None
    got = JSON_TYPES.get(type(value), "something else")
    if kind == "json_invalid":
        return RequestError(f"The request body is not valid JSON ({ctx.get('error', 'parse error')}). Send a JSON "
                            "object with Content-Type: application/json.", None, None)
    if kind == "missing":
        return RequestError(f"Missing required parameter: '{param}'.", param, "missing_required_parameter")
    if kind in EXPECTED:
        return RequestError(f"Invalid type for '{param}': expected {EXPECTED[kind]}, but got {got} instead.",
                            param, "invalid_type")
    if kind in ("greater_than_equal", "greater_than", "less_than_equal", "less_than"):
        number = "integer" if isinstance(value, int) and str(loc[-1]) not in DECIMAL_FIELDS else "decimal"
        low = kind.startswith("greater")
        bound = ctx.get("ge", ctx.get("gt", ctx.get("le", ctx.get("lt"))))
        sign = {"greater_than_equal": ">=", "greater_than": ">", "less_than_equal": "<=", "less_than": "<"}[kind]
        return RequestError(
            f"Invalid '{param}': {number} {'below minimum' if low else 'above maximum'} value. "
            f"Expected a value {sign} {_number(bound)}, but got {_number(value)} instead.",
            param, f"{number}_{'below_min' if low else 'above_max'}_value")
    if kind == "literal_error":
        return RequestError(f"Invalid value: '{value}'. Supported values are: {ctx.get('expected')}.", param, "invalid_value")
    if kind == "too_short":
        if isinstance(value, list) and not value:
            return RequestError(f"Invalid '{param}': empty array. Expected an array with minimum length "
                                f"{ctx.get('min_length', 1)}, but got an empty array instead.", param, "empty_array")
        return RequestError(f"Invalid '{param}': string too short.", param, "string_too_short")
    if kind == "too_long":
        return RequestError(f"Invalid '{param}': array too long. Expected an array with maximum length "
                            f"{ctx.get('max_length')}, but got an array with length {ctx.get('actual_length')} instead.",
                            param, "array_above_max_length")
    if kind == "value_error":  # our own rules (model validators): the message names the field
        error = ctx.get("error")
        if isinstance(error, RuleError):
            where = f"{param}.{error.param}" if param and error.nested else error.param
            return RequestError(str(error).replace(f"'{error.param}'", f"'{where}'"), where, error.code)
    return RequestError(f"Invalid '{param or 'body'}': {err['msg']}.", param, "invalid_value")


class RuleError(ValueError):
    """A cross-field rule broken inside a model validator; carries the field it names."""

    def __init__(self, message: str, param: str, code: str | None = "invalid_value", nested: bool = False) -> None:
        super().__init__(message)
        self.param = param
        self.code = code
        self.nested = nested  # `param` is relative to where the error was found (a content part)


def parse(model: type[BaseModel], raw: bytes) -> Any:
    """Validate a raw JSON body against a request model; a RequestError (400) says what is wrong."""
    try:
        return model.model_validate_json(raw or b"null")
    except ValidationError as exc:
        if any(e["type"] == "model_type" and not e["loc"] for e in exc.errors()):
            raise RequestError("The request body must be a JSON object.", None, "invalid_type") from None
        raise translate_validation_error(exc) from None


# ---------------------------------------------------------------- shared field types

Temperature = Annotated[float | None, Field(None, ge=0, le=2)]
TopP = Annotated[float | None, Field(None, ge=0, le=1)]
Penalty = Annotated[float | None, Field(None, ge=-2, le=2)]
Choices = Annotated[int | None, Field(None, ge=1, le=MAX_CHOICES)]
Stop = Annotated[str | Annotated[list[str], Field(max_length=4)] | None, Field(None)]
LogitBias = dict[str, Annotated[int, Field(ge=-100, le=100)]] | None


class WireModel(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)


class StreamOptions(WireModel):
    include_usage: bool | None = None
    include_obfuscation: bool | None = None


class ImageURL(WireModel):
    url: str
    detail: Literal["auto", "low", "high"] | None = None


class ContentPart(WireModel):
    type: Literal["text", "image_url", "input_audio", "file", "refusal"]
    text: str | None = None
    refusal: str | None = None
    image_url: ImageURL | None = None
    input_audio: dict[str, Any] | None = None
    file: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _payload(self) -> ContentPart:
        field = self.type
        if getattr(self, field) is None:
            raise RuleError(f"Missing required parameter: '{field}' (every content part of this type carries it).",
                            field, "missing_required_parameter", nested=True)
        return self


PART_TYPES = {"assistant": {"text", "refusal"}, "user": {"text", "image_url", "input_audio", "file"}}  # others: text


class WireMessage(WireModel):
    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: str | list[ContentPart] | None = None
    name: str | None = None

    def text(self) -> str:
        if isinstance(self.content, list):
            return "".join(p.text or p.refusal or "" for p in self.content)
        return self.content or ""


class SamplingFields(WireModel):
    """What both endpoints share: sampling, penalties, stop, streaming, the local-server extensions."""

    model: str | None = Field(None, max_length=200)
    temperature: Temperature = None
    top_p: TopP = None
    presence_penalty: Penalty = None
    frequency_penalty: Penalty = None
    logit_bias: LogitBias = None
    n: Choices = None
    seed: int | None = None
    stop: Stop = None
    stream: bool | None = None
    stream_options: StreamOptions | None = None
    user: str | None = None
    # Extensions (vLLM, llama.cpp server):
    top_k: int | None = Field(None, ge=0, le=1000)
    min_p: float | None = Field(None, ge=0, le=1)
    repetition_penalty: float | None = Field(None, ge=0.5, le=2)
    # Extensions (text-generation-webui, koboldcpp, llama.cpp server): typical-p, DRY, XTC
    typical_p: float | None = Field(None, ge=0.01, le=1)
    dry_multiplier: float | None = Field(None, ge=0, le=5)
    dry_base: float | None = Field(None, ge=1, le=4)
    dry_allowed_length: int | None = Field(None, ge=1, le=20)
    dry_sequence_breakers: list[Annotated[str, Field(min_length=1, max_length=20)]] | None = Field(None, max_length=16)
    xtc_threshold: float | None = Field(None, ge=0, le=0.5)
    xtc_probability: float | None = Field(None, ge=0, le=1)
    # Extension (the studio): a sampler preset by name ("default": the one chosen for the model); the
    # sampler fields sent beside it override its values
    preset: str | None = Field(None, min_length=1, max_length=100)

    @field_validator("logit_bias")
    @classmethod
    def _token_ids(cls, bias: dict[str, int] | None) -> dict[str, int] | None:
        """Keys are token ids written as JSON strings (OpenAI's words when one is not); whether the id exists
        is the model's to say (`TextGenerator.check_request`)."""
        for key in bias or {}:
            if not (key.isascii() and key.isdigit()):
                raise RuleError(f"Invalid key in 'logit_bias': {key[:40]}. You should only be submitting non-negative "
                                "integers (token ids of the model's tokenizer).", "logit_bias", None)
            if len(key) > 10 or int(key) >= 2**31:
                raise RuleError(f"Invalid key in 'logit_bias': {key[:40]} is not a token id of any model.", "logit_bias",
                                None)
        if bias is not None and len(bias) > MAX_LOGIT_BIAS:
            raise RuleError(f"Invalid 'logit_bias': {len(bias)} tokens; at most {MAX_LOGIT_BIAS} tokens can be biased "
                            "in one request.", "logit_bias", None)
        return bias

    @model_validator(mode="before")
    @classmethod
    def _stream_options_need_stream(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("stream_options") is not None and data.get("stream") is not True:
            raise RuleError("The 'stream_options' parameter is only allowed when 'stream' is enabled.", "stream_options")
        return data

    @property
    def choices(self) -> int:
        return self.n or 1

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)

    def stop_list(self) -> tuple[str, ...]:
        if self.stop is None:
            return ()
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop)

    def sampling(self, max_new_tokens: int | None) -> dict[str, Any]:
        """SamplingParams values (None = the studio's default)."""
        return {
            "temperature": self.temperature,
            "top_p": self.top_p,
            "top_k": self.top_k,
            "min_p": self.min_p,
            "repetition_penalty": self.repetition_penalty,
            "typical_p": self.typical_p,
            "dry_multiplier": self.dry_multiplier,
            "dry_base": self.dry_base,
            "dry_allowed_length": self.dry_allowed_length,
            "dry_sequence_breakers": None if self.dry_sequence_breakers is None else tuple(self.dry_sequence_breakers),
            "xtc_threshold": self.xtc_threshold,
            "xtc_probability": self.xtc_probability,
            "presence_penalty": self.presence_penalty,
            "frequency_penalty": self.frequency_penalty,
            "max_new_tokens": max_new_tokens,
            "seed": None if self.seed is None else self.seed % SEED_SPACE,
            "stop": tuple(s for s in self.stop_list() if s) or None,
            "logit_bias": {int(t): b for t, b in self.logit_bias.items()} if self.logit_bias else None,
        }


class ChatCompletionRequest(SamplingFields):
    messages: list[WireMessage] = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    logprobs: bool | None = None
    top_logprobs: int | None = Field(None, ge=0, le=20)
    # Studio extensions (send them through the OpenAI client's `extra_body`): chat as one of your characters
    # (its id or exact name), as one of your personas (unset: your default persona)
    character: str | None = Field(None, max_length=200)
    persona: str | None = Field(None, max_length=200)

    @model_validator(mode="after")
    def _rules(self) -> ChatCompletionRequest:
        if self.max_tokens is not None and self.max_completion_tokens is not None:
            raise RuleError("Set either 'max_tokens' or 'max_completion_tokens', not both "
                            "('max_tokens' is the older name of the same limit).", "max_tokens")
        if self.persona is not None and self.character is None:
            raise RuleError("'persona' only applies together with 'character'.", "persona")
        if self.top_logprobs is not None and not self.logprobs:
            raise RuleError("Invalid value for 'top_logprobs': 'logprobs' must be set to true when "
                            "'top_logprobs' is given.", "top_logprobs")
        for i, m in enumerate(self.messages):
            if m.role in ("tool", "function"):
                raise RuleError(f"Invalid parameter: messages with role '{m.role}' must be a response to a preceding "
                                "message with 'tool_calls' (this studio's models do not call tools).",
                                f"messages[{i}].role")
            if m.role != "assistant" and m.content is None:
                raise RuleError(f"Missing required parameter: 'messages[{i}].content'.", f"messages[{i}].content",
                                "missing_required_parameter")
            allowed = PART_TYPES.get(m.role, {"text"})
            for j, part in enumerate(m.content if isinstance(m.content, list) else ()):
                if part.type not in allowed:
                    raise RuleError(f"Invalid value: '{part.type}'. Supported values for {m.role} messages are: "
                                    + ", ".join(f"'{a}'" for a in sorted(allowed)) + ".",
                                    f"messages[{i}].content[{j}].type")
        return self

    @property
    def max_new_tokens(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens

    @property
    def top_logprob_count(self) -> int | None:
        """None: no logprobs; k: the chosen token's logprob and the k most likely alternatives."""
        return (self.top_logprobs or 0) if self.logprobs else None

    def media_parts(self) -> list[tuple[str, str]]:
        """(param, type) of every non-text part (images, audio, files) a text-only model cannot read."""
        return [(f"messages[{i}].content[{j}].type", p.type) for i, m in enumerate(self.messages)
                if isinstance(m.content, list) for j, p in enumerate(m.content) if p.type in ("image_url", "input_audio", "file")]


class CompletionRequest(SamplingFields):
    prompt: str | list[str] | list[int] | list[list[int]]
    max_tokens: int | None = Field(None, ge=0)
    echo: bool | None = None
    logprobs: int | None = Field(None, ge=0, le=5)
    best_of: int | None = Field(None, ge=0, le=20)
    suffix: str | None = None

    @model_validator(mode="after")
    def _rules(self) -> CompletionRequest:
        if self.suffix:
            raise RuleError("Invalid value for 'suffix': this studio's models do not fill in the middle; "
                            "send the text before the gap as the prompt.", "suffix")
        if isinstance(self.prompt, list) and self.prompt and not all(isinstance(p, str) for p in self.prompt):
            raise RuleError("Invalid value for 'prompt': send text (a string or a list of strings); token-id arrays "
                            "depend on a tokenizer and are not accepted here.", "prompt", "invalid_type")
        if isinstance(self.prompt, list) and not self.prompt:
            raise RuleError("Invalid 'prompt': empty array. Expected an array with minimum length 1, but got an "
                            "empty array instead.", "prompt", "empty_array")
        if self.best_of not in (None, 0, 1) and self.best_of < self.choices:
            raise RuleError("Invalid value for 'best_of': it must be greater than or equal to 'n'.", "best_of")
        if self.best_of not in (None, 0, 1) and self.stream:
            raise RuleError("Invalid value for 'best_of': results cannot be streamed when best_of > 1.", "best_of")
        return self

    def prompts(self) -> list[str]:
        return [self.prompt] if isinstance(self.prompt, str) else [p for p in self.prompt if isinstance(p, str)]

    @property
    def max_new_tokens(self) -> int:
        return 16 if self.max_tokens is None else self.max_tokens  # OpenAI's default for this endpoint

    @property
    def candidates(self) -> int:
        return max(self.best_of or 1, self.choices)


# ---------------------------------------------------------------- responses


def error_body(message: str, type_: str = "invalid_request_error", code: str | None = None,
               param: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def studio_error_body(exc: StudioError) -> dict[str, Any]:
    """A StudioError in OpenAI's shape: `type` by status (as OpenAI sorts them), `code` and `param` when known."""
    status = exc.http_status
    type_ = "requests" if status == 429 else "server_error" if status >= 500 else "invalid_request_error"
    if isinstance(exc, RequestError):
        return error_body(str(exc), type_, exc.openai_code, exc.param)
    code = {"busy": "rate_limit_exceeded", "invalid_request_error": "invalid_value"}.get(exc.code, exc.code)
    param = "model" if exc.code == "model_not_found" else getattr(exc, "param", None)  # a field a plugin named
    return error_body(str(exc), type_, code, param)


def usage(prompt: int, completion: int) -> dict[str, int]:
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def chat_logprobs(entries: Any) -> dict[str, Any] | None:
    """Token log-probabilities in the chat format ({content: [{token, logprob, bytes, top_logprobs}]})."""
    if entries is None:
        return None

    def one(token: str, logprob: float) -> dict[str, Any]:
        return {"token": token, "logprob": logprob, "bytes": list(token.encode("utf-8"))}

    return {"content": [{**one(e.token, e.logprob), "top_logprobs": [one(t, lp) for t, lp in e.top]} for e in entries],
            "refusal": None}


def completion_logprobs(entries: Any, offset: int = 0) -> dict[str, Any] | None:
    """Token log-probabilities in the legacy completions format (parallel lists; the first prompt token's is null)."""
    if entries is None:
        return None
    tokens, logprobs, tops, offsets = [], [], [], []
    for e in entries:
        tokens.append(e.token)
        logprobs.append(e.logprob)
        tops.append(dict(e.top) if e.logprob is not None else None)
        offsets.append(offset)
        offset += len(e.token)
    return {"tokens": tokens, "token_logprobs": logprobs, "top_logprobs": tops, "text_offset": offsets}


def chat_completion_body(cid: str, model: str, choices: list[dict[str, Any]], use: dict[str, int]) -> dict[str, Any]:
    return {"id": cid, "object": "chat.completion", "created": int(time.time()), "model": model,
            "system_fingerprint": None, "choices": choices, "usage": use}


def chat_choice(index: int, text: str, finish: str, logprobs: dict[str, Any] | None) -> dict[str, Any]:
    return {"index": index, "message": {"role": "assistant", "content": text, "refusal": None},
            "logprobs": logprobs, "finish_reason": finish}


def chat_chunk(cid: str, model: str, choices: list[dict[str, Any]], use: dict[str, int] | None = None,
               with_usage_field: bool = False) -> dict[str, Any]:
    body: dict[str, Any] = {"id": cid, "object": "chat.completion.chunk", "created": int(time.time()), "model": model,
                            "system_fingerprint": None, "choices": choices}
    if use is not None or with_usage_field:
        body["usage"] = use
    return body


def text_completion_body(cid: str, model: str, choices: list[dict[str, Any]], use: dict[str, int] | None,
                         chunk: bool = False) -> dict[str, Any]:
    body: dict[str, Any] = {"id": cid, "object": "text_completion", "created": int(time.time()), "model": model,
                            "system_fingerprint": None, "choices": choices}
    if use is not None or not chunk:
        body["usage"] = use
    return body


def text_choice(index: int, text: str, finish: str | None, logprobs: dict[str, Any] | None) -> dict[str, Any]:
    return {"index": index, "text": text, "logprobs": logprobs, "finish_reason": finish}
