"""Sign-in and API abuse: who a client is, how often it may call the API, and what a locked-out sign-in sees.

Sign-in lockout is django-axes (``AXES_*`` in settings): after ``LOOM_LOGIN_FAILURE_LIMIT`` wrong passwords
for one username from one client address, that pair is refused for ``LOOM_LOGIN_COOLOFF_MINUTES`` on every
sign-in form (``/login/`` and the admin's), with a 429 and ``Retry-After``. Locking the username alone would
let anyone lock any user out; the pair keeps a guesser out without that.

API throttles are DRF's, per user and per anonymous client, with the rates read from settings at each call
(DRF binds its ``DEFAULT_THROTTLE_RATES`` at import, so an operator's or a test's change would otherwise not
apply). The counters live in the default cache, which is shared by every process of one deployment
(``LOOM_CACHE_URL``), so N web processes do not multiply the rate by N.
"""

from __future__ import annotations

import math
from typing import Any

from django.conf import settings
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from rest_framework.throttling import AnonRateThrottle, UserRateThrottle


def client_address(request: HttpRequest) -> str | None:
    """The client's address: behind the HTTPS proxy Loom's deployment puts in front (``LOOM_BEHIND_HTTPS_PROXY``),
    the address that proxy appended last to ``X-Forwarded-For`` (a client can forge every earlier entry);
    otherwise the peer address. Used for sign-in lockout and anonymous API throttling alike."""
    if getattr(settings, "SECURE_PROXY_SSL_HEADER", None):
        forwarded = request.META.get("HTTP_X_FORWARDED_FOR", "")
        hops = [hop.strip() for hop in forwarded.split(",") if hop.strip()]
        if hops:
            return hops[-1]
    return request.META.get("REMOTE_ADDR")


def cooloff_seconds() -> int:
    return int(settings.AXES_COOLOFF_TIME.total_seconds())


def locked_out(request: HttpRequest, response: HttpResponse | None = None, credentials: Any = None) -> HttpResponse:
    """What a sign-in form answers once its username and address are locked out: the sign-in page (so the
    user knows what happened and when to try again) with 429 and ``Retry-After``."""
    seconds = cooloff_seconds()
    minutes = max(1, math.ceil(seconds / 60))
    answer = render(request, "frontend/locked_out.html", {"minutes": minutes}, status=429)
    answer["Retry-After"] = str(seconds)
    return answer


class _SettingsRate:
    """Take the rate from ``settings.<rate_setting>`` when it is asked for, not when DRF was imported."""

    rate_setting = ""

    def get_rate(self) -> str | None:
        return getattr(settings, self.rate_setting, None) or None


class UserThrottle(_SettingsRate, UserRateThrottle):
    """Per signed-in user (session or API token): ``LOOM_API_RATE_USER``."""

    rate_setting = "LOOM_API_RATE_USER"

    def get_cache_key(self, request: Any, view: Any) -> str | None:
        if request.user and request.user.is_authenticated:
            return self.cache_format % {"scope": self.scope, "ident": request.user.pk}
        return None  # anonymous requests are the anonymous throttle's


class AnonThrottle(_SettingsRate, AnonRateThrottle):
    """Per client address, for requests without a user: ``LOOM_API_RATE_ANON``."""

    rate_setting = "LOOM_API_RATE_ANON"

    def get_ident(self, request: Any) -> str:
        return client_address(request) or "unknown"


class TokenFailureThrottle(AnonThrottle):
    """Wrong API tokens per client address, at ``LOOM_API_RATE_ANON``. DRF checks throttles only after the
    permission check, so a request with a made-up token ends at 401 before any throttle counts it: token
    guessing is counted here instead, by the token authentication, and only its failures count."""

    scope = "token_failures"

    def wait_before_trying(self, request: Any) -> float | None:
        """Seconds this address must wait before its next token is even looked at, or None when it may try."""
        if self.rate is None:
            return None
        self.key = self.cache_format % {"scope": self.scope, "ident": self.get_ident(request)}
        self.now = self.timer()
        self.history = [moment for moment in self.cache.get(self.key, []) if moment > self.now - self.duration]
        if len(self.history) >= self.num_requests:
            return self.wait()
        return None

    def failed(self) -> None:
        """Count the failure ``wait_before_trying`` just looked at."""
        if self.rate is not None:
            self.history.insert(0, self.now)
            self.cache.set(self.key, self.history, self.duration)
