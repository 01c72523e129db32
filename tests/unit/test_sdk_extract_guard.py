"""Usage extraction from real client-library objects; QuotaGuard; uuid7."""

from __future__ import annotations

import threading
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from anthropic.types import Message
from openai.types.chat import ChatCompletion
from openai.types.responses import Response

from tokenpulse.errors import QuotaExceeded
from tokenpulse.schemas import QuotaState, encode_quota_state, quota_state_key
from tokenpulse.sdk import (
    QuotaGuard,
    usage_from_anthropic,
    usage_from_dict,
    usage_from_openai,
    uuid7,
)
from tokenpulse.sdk._record import build_event


def test_openai_chat_completion() -> None:
    completion = ChatCompletion.model_validate(
        {
            "id": "chatcmpl-1",
            "object": "chat.completion",
            "created": 1764057600,
            "model": "gpt-4o-2024-08-06",
            "choices": [
                {
                    "index": 0,
                    "finish_reason": "stop",
                    "message": {"role": "assistant", "content": "hi"},
                }
            ],
            "usage": {
                "prompt_tokens": 1200,
                "completion_tokens": 300,
                "total_tokens": 1500,
                "prompt_tokens_details": {"cached_tokens": 1024},
                "completion_tokens_details": {"reasoning_tokens": 128},
            },
        }
    )
    usage = usage_from_openai(completion)
    assert (usage.input_tokens, usage.output_tokens) == (1200, 300)
    assert (usage.cached_input_tokens, usage.reasoning_tokens) == (1024, 128)
    assert (usage.model, usage.provider) == ("gpt-4o-2024-08-06", "openai")
    event, _ = build_event(tenant_id="acme", **usage.as_kwargs())
    assert event.cached_input_tokens == 1024
    assert usage_from_openai(completion.usage).model is None


def test_openai_responses_api() -> None:
    response = Response.model_validate(
        {
            "id": "resp_1",
            "object": "response",
            "created_at": 1764057600,
            "model": "o4-mini",
            "output": [],
            "parallel_tool_calls": True,
            "tool_choice": "auto",
            "tools": [],
            "usage": {
                "input_tokens": 900,
                "output_tokens": 400,
                "total_tokens": 1300,
                "input_tokens_details": {"cached_tokens": 512, "cache_write_tokens": 100},
                "output_tokens_details": {"reasoning_tokens": 350},
            },
        }
    )
    usage = usage_from_openai(response)
    assert (usage.input_tokens, usage.output_tokens, usage.cached_input_tokens) == (900, 400, 512)
    assert (usage.reasoning_tokens, usage.model) == (350, "o4-mini")
    assert usage.attributes == {"cache_creation_input_tokens": "100"}


def test_anthropic_message_counts_cache_writes_as_input() -> None:
    message = Message.model_validate(
        {
            "id": "msg_1",
            "type": "message",
            "role": "assistant",
            "model": "claude-sonnet-4-5",
            "content": [{"type": "text", "text": "hi"}],
            "stop_reason": "end_turn",
            "stop_sequence": None,
            "usage": {
                "input_tokens": 50,
                "output_tokens": 200,
                "cache_read_input_tokens": 3000,
                "cache_creation_input_tokens": 1000,
            },
        }
    )
    usage = usage_from_anthropic(message)
    assert usage.input_tokens == 4050
    assert usage.cached_input_tokens == 3000
    assert usage.attributes == {"cache_creation_input_tokens": "1000"}
    assert (usage.model, usage.provider, usage.output_tokens) == (
        "claude-sonnet-4-5",
        "anthropic",
        200,
    )
    event, _ = build_event(tenant_id="acme", **usage.as_kwargs())
    assert event.attributes["cache_creation_input_tokens"] == "1000"


def test_litellm_style_dict() -> None:
    usage = usage_from_dict(
        {
            "prompt_tokens": 4050,
            "completion_tokens": 20,
            "total_tokens": 4070,
            "prompt_tokens_details": {"cached_tokens": 3000},
            "cache_read_input_tokens": 3000,
            "cache_creation_input_tokens": 1000,
        },
        model="claude-sonnet-4-5",
    )
    assert (usage.input_tokens, usage.cached_input_tokens, usage.output_tokens) == (4050, 3000, 20)
    assert usage.attributes == {"cache_creation_input_tokens": "1000"}
    assert usage_from_dict({"input_tokens": 5, "output_tokens": 1}).input_tokens == 5


def test_missing_usage_block_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="no usage"):
        usage_from_openai({"id": "x"})


NOW = datetime.now(UTC)


def _state(
    tenant: str,
    status: str,
    *,
    hard: bool = True,
    model: str | None = None,
    ends: timedelta = timedelta(hours=1),
) -> bytes:
    return encode_quota_state(
        QuotaState(
            tenant_id=tenant,
            quota_id=f"q-{tenant}",
            status=status,  # type: ignore[arg-type]
            used=110,
            limit=100,
            period_start=NOW - timedelta(hours=1),
            period_end=NOW + ends,
            updated_at=NOW,
            hard=hard,
            model=model,
        )
    )


def test_guard_blocks_descendants_of_an_exceeded_hard_quota() -> None:
    guard = QuotaGuard()
    guard.apply(
        quota_state_key("acme/research", "q-acme/research"), _state("acme/research", "exceeded")
    )
    assert guard.is_blocked("acme/research/agent-7")
    assert guard.is_blocked("acme/research")
    assert not guard.is_blocked("acme")
    assert not guard.is_blocked("acme/researchers")
    with pytest.raises(QuotaExceeded) as info:
        guard.check("acme/research/agent-7")
    assert info.value.limit_id == "q-acme/research"
    # tombstone lifts the block
    guard.apply(quota_state_key("acme/research", "q-acme/research"), None)
    assert not guard.is_blocked("acme/research/agent-7")


@pytest.mark.parametrize(
    ("value", "model", "blocked"),
    [
        (_state("acme", "warning"), None, False),
        (_state("acme", "exceeded", hard=False), None, False),
        (_state("acme", "exceeded", ends=-timedelta(seconds=1)), None, False),
        (_state("acme", "exceeded", model="gpt-4o"), None, False),
        (_state("acme", "exceeded", model="gpt-4o"), "gpt-4o", True),
        (_state("acme", "exceeded"), "any-model", True),
        (b"not json", None, False),
    ],
)
def test_guard_rules(value: bytes, model: str | None, blocked: bool) -> None:
    guard = QuotaGuard()
    guard.apply(b"acme|q-acme", value)
    assert guard.is_blocked("acme/x", model) is blocked


def test_uuid7_format_and_order() -> None:
    ids = [uuid7() for _ in range(50_000)]
    assert ids == sorted(ids)
    assert len(set(ids)) == len(ids)
    parsed = uuid.UUID(ids[0])
    assert (parsed.version, parsed.variant) == (7, uuid.RFC_4122)
    assert str(parsed) == ids[0]
    ms = int(ids[-1].replace("-", "")[:12], 16)
    assert abs(ms - datetime.now(UTC).timestamp() * 1000) < 60_000


def test_uuid7_unique_across_threads() -> None:
    out: list[list[str]] = [[] for _ in range(4)]

    def work(i: int) -> None:
        out[i].extend(uuid7() for _ in range(20_000))

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    flat = [x for ids in out for x in ids]
    assert len(set(flat)) == len(flat)
    assert all(ids == sorted(ids) for ids in out)
