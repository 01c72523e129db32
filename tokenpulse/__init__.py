"""tokenpulse: real-time token-usage metering for AI agents.

Reading guide: `tokenpulse.sdk` is what agent runtimes import;
`tokenpulse.schemas` is the event contract; `tokenpulse.streams` holds the
Faust workers; `tokenpulse.sinks` writes to ClickHouse; `tokenpulse.local`
starts real Kafka and the embedded ClickHouse endpoint on a bare machine;
`tokenpulse.cli` is the `tokenpulse` command. Every error we raise derives
from `tokenpulse.errors.TokenpulseError`.
"""

from tokenpulse.errors import TokenpulseError

__all__ = ["TokenpulseError", "__version__"]
__version__ = "0.1.0"
