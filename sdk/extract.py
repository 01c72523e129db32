"""Token counts from provider responses, mapped onto UsageEvent's fields.

Works on the client libraries' response objects (pydantic models) and on
plain dicts of the same shape, without importing openai or anthropic.

Mapping decisions (docs/sdk.md):
- OpenAI Chat Completions: prompt_tokens already includes cached tokens, so
  input_tokens = prompt_tokens and cached_input_tokens = cached_tokens;
  reasoning_tokens is part of completion_tokens. Responses API: the same with
  input_tokens/output_tokens and *_details.
- Anthropic: input_tokens counts only uncached input. Cache reads and cache
  writes are input too (billed at a discount and a premium), so
  input_tokens = input + cache_read + cache_creation, cached_input_tokens =
  cache_read, and cache_creation is kept in attributes
  ["cache_creation_input_tokens"] so billing can apply the write premium.
  thinking tokens (output_tokens_details.thinking_tokens) -> reasoning_tokens.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Usage:
    """Token counts of one model call, ready for record(**usage.as_kwargs())."""

    input_tokens: int
    output_tokens: int
    cached_input_tokens: int = 0
    reasoning_tokens: int = 0
    model: str | None = None
    provider: str | None = None
    attributes: dict[str, str] = field(default_factory=dict)

    def as_kwargs(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
            "cached_input_tokens": self.cached_input_tokens,
            "reasoning_tokens": self.reasoning_tokens,
        }
        if self.model is not None:
            out["model"] = self.model
        if self.provider is not None:
            out["provider"] = self.provider
        if self.attributes:
            out["attributes"] = dict(self.attributes)
        return out


def _get(obj: Any, name: str) -> Any:
    if obj is None:
        return None
    if isinstance(obj, Mapping):
        return obj.get(name)
    return getattr(obj, name, None)


def _int(obj: Any, name: str) -> int:
    value = _get(obj, name)
    return int(value) if value is not None else 0


def _usage_of(response: Any) -> Any:
    usage = _get(response, "usage")
    if usage is None:
        raise ValueError("response has no usage block (streaming without include_usage?)")
    return usage


def usage_from_openai(response: Any) -> Usage:
    """From a ChatCompletion, a Responses API Response, or their usage dicts."""
    usage = _get(response, "usage")
    if usage is None and (
        _get(response, "prompt_tokens") is not None or _get(response, "input_tokens") is not None
    ):
        usage = response  # the usage object itself
    if usage is None:
        usage = _usage_of(response)
    attributes: dict[str, str] = {}
    if _get(usage, "prompt_tokens") is not None:  # Chat Completions
        prompt = _get(usage, "prompt_tokens_details")
        completion = _get(usage, "completion_tokens_details")
        inp, out = _int(usage, "prompt_tokens"), _int(usage, "completion_tokens")
        cache_write = _int(prompt, "cache_write_tokens")
        if cache_write:
            attributes["cache_creation_input_tokens"] = str(cache_write)
        cached, reasoning = _int(prompt, "cached_tokens"), _int(completion, "reasoning_tokens")
    else:  # Responses API
        inp, out = _int(usage, "input_tokens"), _int(usage, "output_tokens")
        details = _get(usage, "input_tokens_details")
        cached = _int(details, "cached_tokens")
        if _int(details, "cache_write_tokens"):
            attributes["cache_creation_input_tokens"] = str(_int(details, "cache_write_tokens"))
        reasoning = _int(_get(usage, "output_tokens_details"), "reasoning_tokens")
    model = _get(response, "model") if usage is not response else None
    return Usage(
        input_tokens=inp,
        output_tokens=out,
        cached_input_tokens=cached,
        reasoning_tokens=reasoning,
        model=model,
        provider="openai",
        attributes=attributes,
    )


def usage_from_anthropic(message: Any) -> Usage:
    """From an anthropic Message (or its usage object / dict)."""
    usage = _get(message, "usage")
    is_usage = usage is None and _get(message, "input_tokens") is not None
    if is_usage:
        usage = message
    elif usage is None:
        usage = _usage_of(message)
    cache_read = _int(usage, "cache_read_input_tokens")
    cache_creation = _int(usage, "cache_creation_input_tokens")
    attributes: dict[str, str] = {}
    if cache_creation:
        attributes["cache_creation_input_tokens"] = str(cache_creation)
    return Usage(
        input_tokens=_int(usage, "input_tokens") + cache_read + cache_creation,
        output_tokens=_int(usage, "output_tokens"),
        cached_input_tokens=cache_read,
        reasoning_tokens=_int(_get(usage, "output_tokens_details"), "thinking_tokens"),
        model=None if is_usage else _get(message, "model"),
        provider="anthropic",
        attributes=attributes,
    )


def usage_from_dict(usage: Mapping[str, Any], *, model: str | None = None) -> Usage:
    """From a LiteLLM-style usage dict (OpenAI names, optionally Anthropic cache fields).

    LiteLLM reports prompt_tokens including cache reads and writes, plus
    cache_read_input_tokens / cache_creation_input_tokens for Anthropic models.
    """
    prompt = usage.get("prompt_tokens_details") or {}
    completion = usage.get("completion_tokens_details") or {}
    inp = int(usage.get("prompt_tokens", usage.get("input_tokens", 0)) or 0)
    out = int(usage.get("completion_tokens", usage.get("output_tokens", 0)) or 0)
    cached = int(_get(prompt, "cached_tokens") or usage.get("cache_read_input_tokens") or 0)
    attributes: dict[str, str] = {}
    creation = int(usage.get("cache_creation_input_tokens") or 0)
    if creation:
        attributes["cache_creation_input_tokens"] = str(creation)
    return Usage(
        input_tokens=inp,
        output_tokens=out,
        cached_input_tokens=cached,
        reasoning_tokens=int(_get(completion, "reasoning_tokens") or 0),
        model=model,
        provider=None,
        attributes=attributes,
    )
