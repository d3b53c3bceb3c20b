"""Structured logs: one JSON object per line (``LOOM_LOG_FORMAT=json``).

Log shippers (journald, Loki, CloudWatch, ...) index a JSON line's keys without parsing free text, so the
``extra`` fields the engine already passes (``tenant``, ``cluster``, ``job``, ``task``, ``attempt``,
``worker``, ``outcome``, ...) become searchable: "everything about job 812" is a filter, not a grep.

Every line has ``time`` (UTC, ISO 8601 with milliseconds), ``level``, ``logger`` and ``message``, then the
extra fields at the top level, then ``exception`` (the traceback) when there is one. The ``RedactingFilter``
stays in the handler's chain and cleans the message; this formatter also redacts the string values of the
extra fields and the traceback, which the filter does not see.
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from typing import Any

from providers.secrets import redact

_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime", "taskName"}
"""Attributes every LogRecord has; anything else on a record came from ``extra=``."""

CORE_KEYS = ("time", "level", "logger", "message")


def _clean(value: Any) -> Any:
    """``value`` made JSON-safe with every string redacted (nested dicts and lists included)."""
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {str(key): _clean(item) for key, item in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [_clean(item) for item in value]
    if value is None or isinstance(value, (bool, int, float)):
        return value
    return redact(str(value))


class JsonFormatter(logging.Formatter):
    """Formats a record as one JSON line (see the module docstring for the keys)."""

    def format(self, record: logging.LogRecord) -> str:
        moment = datetime.fromtimestamp(record.created, tz=UTC)
        entry: dict[str, Any] = {
            "time": moment.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "message": redact(record.getMessage()),
        }
        for key, value in vars(record).items():
            if key in _STANDARD or key.startswith("_"):
                continue
            # An extra field may not hide a core key: it is kept under a prefixed name instead.
            entry["extra_" + key if key in CORE_KEYS else key] = _clean(value)
        if record.exc_info:
            entry["exception"] = redact(self.formatException(record.exc_info))
        elif record.exc_text:
            entry["exception"] = redact(record.exc_text)
        if record.stack_info:
            entry["stack"] = redact(self.formatStack(record.stack_info))
        return json.dumps(entry, ensure_ascii=False, separators=(",", ":"))
