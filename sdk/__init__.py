"""tokenpulse.sdk: publish token usage from an agent runtime.

Reading guide:
  UsageProducer / SyncUsageProducer   record(...) usage events (asyncio / threads)
  ProducerConfig                      settings (ProducerConfig.from_env())
  ProducerStats, DeliveryReport       counters; what close()/flush() could not deliver
  QuotaGuard                          standalone edge check on tokenpulse.quota.state.v1
  usage_from_openai / usage_from_anthropic / usage_from_dict
                                      token counts from provider responses
  uuid7                               the event_id generator

Errors come from tokenpulse.errors: InvalidRecord (bad event, nothing sent; or,
in DeliveryReport.errors, an event too large for the topic), ServiceUnavailable
(buffer full under overflow_policy="block"), QuotaExceeded.
This package imports tokenpulse.schemas and aiokafka only.
"""

from tokenpulse.sdk._config import ProducerConfig
from tokenpulse.sdk._guard import QuotaGuard
from tokenpulse.sdk._pipeline import DeliveryReport, ProducerStats
from tokenpulse.sdk._producer import UsageProducer
from tokenpulse.sdk._sync import SyncUsageProducer
from tokenpulse.sdk._uuid7 import uuid7
from tokenpulse.sdk.extract import Usage, usage_from_anthropic, usage_from_dict, usage_from_openai

__all__ = [
    "DeliveryReport",
    "ProducerConfig",
    "ProducerStats",
    "QuotaGuard",
    "SyncUsageProducer",
    "Usage",
    "UsageProducer",
    "usage_from_anthropic",
    "usage_from_dict",
    "usage_from_openai",
    "uuid7",
]
