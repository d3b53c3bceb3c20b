"""API token authentication: ``Authorization: Bearer loom_<prefix>_<secret>`` (or ``Token ...``).

Only the SHA-256 of a token is stored, so a database dump reveals no usable token. Revoked and expired
tokens fail exactly like unknown ones, and an address sending too many wrong tokens is refused with a 429
before its next one is looked up (``loom_site.abuse.TokenFailureThrottle``).
"""

from __future__ import annotations

from typing import Any

from django.utils import timezone
from rest_framework import authentication, exceptions

from loom_site.abuse import TokenFailureThrottle

from .models import ApiToken


class ApiTokenAuthentication(authentication.BaseAuthentication):
    keywords = ("bearer", "token")

    def authenticate(self, request: Any) -> tuple[Any, ApiToken] | None:
        header = authentication.get_authorization_header(request).split()
        if not header or header[0].lower().decode() not in self.keywords:
            return None
        if len(header) != 2:
            raise exceptions.AuthenticationFailed("malformed Authorization header: expected '<scheme> <token>'")
        failures = TokenFailureThrottle()
        wait = failures.wait_before_trying(request)
        if wait is not None:
            raise exceptions.Throttled(wait, detail="too many invalid API tokens from this address")
        try:
            key = header[1].decode()
        except UnicodeError as error:
            failures.failed()
            raise exceptions.AuthenticationFailed("token contains invalid characters") from error
        token = (
            ApiToken.objects.select_related("user")
            .filter(key_hash=ApiToken.hash_key(key), revoked_at__isnull=True)
            .first()
        )
        if token is None or not token.is_active or not token.user.is_active:
            failures.failed()
            raise exceptions.AuthenticationFailed("invalid, expired or revoked token")
        now = timezone.now()
        if token.last_used_at is None or (now - token.last_used_at).total_seconds() > 60:
            ApiToken.objects.filter(pk=token.pk).update(last_used_at=now)
        return token.user, token

    def authenticate_header(self, request: Any) -> str:
        return 'Bearer realm="loom"'
