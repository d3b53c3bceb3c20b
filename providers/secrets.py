"""Field encryption (MultiFernet, keys from ``LOOM_FIELD_ENCRYPTION_KEYS``) and log redaction.

The first key encrypts; every key decrypts, so rotation is: prepend a new key, run
``manage.py rotate_field_keys`` (re-encrypts every stored secret with the new key), then drop the old one.
"""

from __future__ import annotations

import json
import logging
import threading
from functools import lru_cache
from typing import Any

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from django.conf import settings

ENCRYPTED = "$encrypted$"
REDACTED = "***"


class SecretsError(RuntimeError):
    """Stored secrets cannot be decrypted with the configured keys."""


@lru_cache(maxsize=4)
def _fernet(keys: tuple[str, ...]) -> MultiFernet:
    if not keys:
        raise SecretsError("LOOM_FIELD_ENCRYPTION_KEYS is empty")
    return MultiFernet([Fernet(key.encode() if isinstance(key, str) else key) for key in keys])


def fernet() -> MultiFernet:
    return _fernet(tuple(settings.FIELD_ENCRYPTION_KEYS))


def encrypt_json(values: dict[str, Any]) -> str:
    if not values:
        return ""
    return fernet().encrypt(json.dumps(values, sort_keys=True).encode()).decode()


def decrypt_json(token: str) -> dict[str, Any]:
    if not token:
        return {}
    try:
        values = json.loads(fernet().decrypt(token.encode()))
    except InvalidToken as error:
        raise SecretsError(
            "stored secrets cannot be decrypted: is the key that wrote them in LOOM_FIELD_ENCRYPTION_KEYS?"
        ) from error
    register_secrets(values.values())
    return values


def rotate_token(token: str) -> str:
    """Re-encrypt ``token`` with the first (newest) key."""
    return fernet().rotate(token.encode()).decode() if token else token


_known_secrets: set[str] = set()
_lock = threading.Lock()


def register_secrets(values: Any) -> None:
    """Remember secret values so every log line that would contain one is redacted."""
    with _lock:
        for value in values:
            if isinstance(value, str) and len(value) >= 4:
                _known_secrets.add(value)


def redact(text: str) -> str:
    for secret in sorted(_known_secrets, key=len, reverse=True):
        if secret in text:
            text = text.replace(secret, REDACTED)
    return text


class RedactingFilter(logging.Filter):
    """Logging filter: replaces every known secret value in the formatted message."""

    def filter(self, record: logging.LogRecord) -> bool:
        if _known_secrets:
            message = record.getMessage()
            cleaned = redact(message)
            if cleaned != message:
                record.msg, record.args = cleaned, None
        return True
