"""JSON log lines for the worker (TOKENPULSE_LOG_FORMAT=json).

One JSON object per line: ts (RFC 3339 UTC), level, logger, msg, plus any
`extra=` fields of the record and `exc` for tracebacks. Extra fields whose
name says they hold a secret are masked, as a second line of defence behind
"never pass secrets to a logger".
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from typing import Any

_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message",
    "asctime",
    "taskName",
}
_SECRET_WORDS = ("secret", "password", "passwd", "authorization", "api_key", "token_value")


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key in _STANDARD or key.startswith("_") or key in out:
                continue
            if any(word in key.lower() for word in _SECRET_WORDS):
                value = "***"
            out[key] = value
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str, ensure_ascii=False)


def logging_config(level: str, fmt: str) -> dict[str, Any] | None:
    """The dictConfig for Faust's worker; None keeps Faust's own (text) setup."""
    if fmt != "json":
        return None
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"json": {"()": "tokenpulse.streams.logs.JsonFormatter"}},
        "handlers": {
            "default": {
                "class": "logging.StreamHandler",
                "formatter": "json",
                "stream": "ext://sys.stderr",
            }
        },
        "root": {"level": level.upper(), "handlers": ["default"]},
    }
