"""Single sign-on with OpenID Connect, and the switch that turns password sign-in off.

Built on mozilla-django-oidc (the authorization-code flow with PKCE, state and nonce), configured only by
``LOOM_OIDC_*`` settings. What Loom adds to the library:

- **Discovery.** The library wants every endpoint spelled out; Loom reads them from the issuer's
  ``/.well-known/openid-configuration`` when first needed (not at start-up, so a provider that is down does
  not stop Loom starting) and keeps them for ``DISCOVERY_SECONDS``. The document must name the configured
  issuer, as OpenID Connect Discovery requires.
- **Stricter tokens.** The library checks neither the ID token's ``iss`` and ``aud`` nor that the userinfo
  ``sub`` is the ID token's; Loom checks all three, so a token minted for another client of the same
  provider, or userinfo of another account, signs nobody in.
- **Who the user is** comes only from the ``iss`` + ``sub`` link (``ExternalIdentity``), never from a
  username or email match (see ``tenants.services.sso_sign_in``), and what they may do comes from the
  groups claim, applied at every sign-in.
- **Clear failures.** A provider that does not answer, a refused or replayed sign-in, or someone the groups
  give no tenant: the sign-in page says which, instead of an error page.

The identity provider is the operator's, named in settings, so the egress policy that guards addresses
tenants supply does not apply to it (tenants cannot change it).
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

import requests
from django.conf import settings
from django.contrib import auth, messages
from django.contrib.auth import get_user_model
from django.contrib.auth.backends import ModelBackend
from django.core.exceptions import SuspiciousOperation
from django.db import IntegrityError
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseRedirect
from django.urls import reverse
from django.utils.deprecation import MiddlewareMixin
from django.utils.functional import cached_property
from django.views.generic import View
from mozilla_django_oidc import middleware as mozilla_middleware
from mozilla_django_oidc.auth import OIDCAuthenticationBackend
from mozilla_django_oidc.utils import import_from_settings
from mozilla_django_oidc.views import OIDCAuthenticationCallbackView, OIDCAuthenticationRequestView

from .errors import ApplicationError, SignInRefused
from .identity import sso_sign_in

logger = logging.getLogger(__name__)

DISCOVERY_SECONDS = 3600
# mozilla-django-oidc setting -> the discovery document's field that answers it.
_DISCOVERED = {
    "OIDC_OP_AUTHORIZATION_ENDPOINT": "authorization_endpoint",
    "OIDC_OP_TOKEN_ENDPOINT": "token_endpoint",
    "OIDC_OP_USER_ENDPOINT": "userinfo_endpoint",
    "OIDC_OP_JWKS_ENDPOINT": "jwks_uri",
    "OIDC_OP_LOGOUT_ENDPOINT": "end_session_endpoint",
}


class ProviderUnavailable(ApplicationError):
    """The identity provider's discovery document could not be read or is not for the configured issuer."""


def enabled() -> bool:
    return bool(settings.LOOM_OIDC_ISSUER)


_discovery_lock = threading.Lock()
_discovered: dict[str, tuple[float, dict[str, Any]]] = {}


def provider_metadata() -> dict[str, Any]:
    """The issuer's discovery document, fetched once per ``DISCOVERY_SECONDS`` per process."""
    issuer = settings.LOOM_OIDC_ISSUER.rstrip("/")
    with _discovery_lock:
        cached = _discovered.get(issuer)
        if cached is not None and cached[0] > time.monotonic():
            return cached[1]
    url = f"{issuer}/.well-known/openid-configuration"
    try:
        response = requests.get(url, timeout=settings.OIDC_TIMEOUT, verify=settings.OIDC_VERIFY_SSL)
        response.raise_for_status()
        metadata = response.json()
    except (requests.RequestException, ValueError) as exc:
        raise ProviderUnavailable(f"The identity provider at {issuer} did not answer: {exc}") from exc
    if not isinstance(metadata, dict) or str(metadata.get("issuer", "")).rstrip("/") != issuer:
        raise ProviderUnavailable(f"The discovery document at {url} is not for issuer {issuer}")
    missing = [field for field in ("authorization_endpoint", "token_endpoint", "jwks_uri") if not metadata.get(field)]
    if missing:
        raise ProviderUnavailable(f"The discovery document at {url} names no {', '.join(missing)}")
    with _discovery_lock:
        _discovered[issuer] = (time.monotonic() + DISCOVERY_SECONDS, metadata)
    return metadata


def forget_provider_metadata() -> None:
    """Drop the cached discovery documents (tests; an operator's key rotation does not need it)."""
    with _discovery_lock:
        _discovered.clear()


def oidc_setting(attr: str, *default: Any) -> Any:
    """What mozilla-django-oidc reads as a setting: endpoints from discovery, the rest from settings."""
    if attr in _DISCOVERED:
        value = provider_metadata().get(_DISCOVERED[attr])
        if value:
            return value
        if default:
            return default[0]
        raise ProviderUnavailable(f"The identity provider names no {_DISCOVERED[attr]}")
    return import_from_settings(attr, *default)


def _setting_property(attr: str) -> property:
    """An attribute the library sets in ``__init__``, read lazily instead, so that building a backend or a
    view (Django builds every backend for every password sign-in) never contacts the provider."""
    return property(lambda self: oidc_setting(attr), lambda self, value: None)


# --- password sign-in ------------------------------------------------------------------------------------


class PasswordBackend(ModelBackend):
    """Django's username and password backend, obeying ``LOOM_PASSWORD_LOGIN``.

    ``off`` refuses every password (on /login/, the admin login and the browsable API's login alike, since
    all go through the backends), ``superusers`` keeps it for Loom's superusers only as a break-glass way in
    when the identity provider is down. Sessions made with a password end too: Django asks the backend that
    signed a session in to load its user on every request.
    """

    def user_can_authenticate(self, user: Any) -> bool:
        mode = settings.LOOM_PASSWORD_LOGIN
        if mode == "off" or (mode == "superusers" and not user.is_superuser):
            return False
        return super().user_can_authenticate(user)


# --- OpenID Connect --------------------------------------------------------------------------------------


class TokenRejected(SuspiciousOperation):
    """The provider's answer does not pass Loom's own checks (wrong issuer, audience or subject)."""


def id_token_problem(payload: dict[str, Any], *, issuer: str, client_id: str) -> str | None:
    """What is wrong with a signature-checked ID token for this client (OpenID Connect Core 3.1.3.7), if
    anything: the library checks the signature, expiry and nonce, but not these."""
    issuer = issuer.rstrip("/")
    if str(payload.get("iss", "")).rstrip("/") != issuer:
        return f"ID token issued by {payload.get('iss')!r}, not {issuer!r}"
    if not isinstance(payload.get("sub"), str) or not payload["sub"]:
        return "ID token names no subject"
    audience = payload.get("aud")
    audiences = audience if isinstance(audience, list) else [audience]
    if client_id not in audiences:
        return "ID token is not for this client"
    if len(audiences) > 1 and payload.get("azp") != client_id:
        return "ID token has several audiences and was not issued to this client (azp)"
    return None


class SingleSignOnBackend(OIDCAuthenticationBackend):
    """mozilla-django-oidc's backend with discovery, stricter token checks, and Loom's user mapping."""

    get_settings = staticmethod(oidc_setting)
    OIDC_OP_TOKEN_ENDPOINT = _setting_property("OIDC_OP_TOKEN_ENDPOINT")
    OIDC_OP_USER_ENDPOINT = _setting_property("OIDC_OP_USER_ENDPOINT")
    OIDC_OP_JWKS_ENDPOINT = _setting_property("OIDC_OP_JWKS_ENDPOINT")
    OIDC_RP_CLIENT_ID = _setting_property("OIDC_RP_CLIENT_ID")
    OIDC_RP_CLIENT_SECRET = _setting_property("OIDC_RP_CLIENT_SECRET")
    OIDC_RP_SIGN_ALGO = _setting_property("OIDC_RP_SIGN_ALGO")
    OIDC_RP_IDP_SIGN_KEY = property(lambda self: None, lambda self, value: None)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.UserModel = get_user_model()

    def authenticate(self, request: HttpRequest | None, **kwargs: Any) -> Any:
        # Only the callback view's call (which passes the nonce it kept) runs the code flow: a password
        # sign-in posted to a URL that happens to carry ?code=&state= must not start a token exchange.
        if not enabled() or request is None or "nonce" not in kwargs or set(kwargs) - {"nonce", "code_verifier"}:
            return None
        try:
            return super().authenticate(request, **kwargs)
        except SignInRefused as refusal:
            messages.error(request, str(refusal))
            return None

    def verify_token(self, token: str, **kwargs: Any) -> dict[str, Any]:
        payload = super().verify_token(token, **kwargs)
        if "nonce" in kwargs:  # the ID token (the library also verifies signed userinfo here)
            problem = id_token_problem(payload, issuer=settings.LOOM_OIDC_ISSUER, client_id=settings.OIDC_RP_CLIENT_ID)
            if problem:
                raise TokenRejected(problem)
        return payload

    def get_or_create_user(self, access_token: str, id_token: str, payload: dict[str, Any]) -> Any:
        userinfo = self.get_userinfo(access_token, id_token, payload)
        if userinfo.get("sub") != payload.get("sub"):
            raise TokenRejected("the userinfo answer is for another subject than the ID token")
        # Some providers put groups only in the ID token, others only in userinfo: take both, userinfo last.
        claims = {**payload, **userinfo}
        issuer = settings.LOOM_OIDC_ISSUER.rstrip("/")
        try:
            return sso_sign_in(issuer=issuer, claims=claims)
        except IntegrityError:
            # The same person's first sign-in in two tabs at once: the other one made the link; use it.
            return sso_sign_in(issuer=issuer, claims=claims)

    def get_user(self, user_id: Any) -> Any:
        user = super().get_user(user_id)
        return user if user is not None and user.is_active else None


def _failure(request: HttpRequest, message: str) -> HttpResponse:
    messages.error(request, message)
    return HttpResponseRedirect(reverse("frontend:login"))


class SignInView(OIDCAuthenticationRequestView):
    """``/oidc/authenticate/``: off to the identity provider (with state, nonce and a PKCE challenge)."""

    get_settings = staticmethod(oidc_setting)
    OIDC_OP_AUTH_ENDPOINT = _setting_property("OIDC_OP_AUTHORIZATION_ENDPOINT")
    OIDC_RP_CLIENT_ID = _setting_property("OIDC_RP_CLIENT_ID")

    def __init__(self, **kwargs: Any) -> None:
        View.__init__(self, **kwargs)

    def get(self, request: HttpRequest) -> HttpResponse:
        if not enabled():
            raise Http404("single sign-on is not configured")
        try:
            return super().get(request)
        except ProviderUnavailable as exc:
            logger.warning("single sign-on unavailable: %s", exc)
            return _failure(request, f"Single sign-on is not available right now. {exc}")


class CallbackView(OIDCAuthenticationCallbackView):
    """``/oidc/callback/``: the provider sends the browser back here with a code, or with an error."""

    get_settings = staticmethod(oidc_setting)

    def get(self, request: HttpRequest) -> HttpResponse:
        if not enabled():
            raise Http404("single sign-on is not configured")
        try:
            return super().get(request)
        except TokenRejected as exc:
            logger.warning("single sign-on refused: %s", exc)
            return _failure(request, "The identity provider's answer did not pass Loom's checks; sign-in refused.")
        except SuspiciousOperation as exc:
            logger.warning("single sign-on refused: %s", exc)
            return _failure(request, "That sign-in was not started here or was already used; please sign in again.")
        except (ProviderUnavailable, requests.RequestException) as exc:
            logger.warning("single sign-on failed: %s", exc)
            return _failure(request, "The identity provider did not complete the sign-in; please try again.")

    def login_failure(self) -> HttpResponse:
        if self.request.user.is_authenticated:
            # A refresh (SessionRefresh) the provider or Loom refused: whoever was signed in is no longer.
            auth.logout(self.request)
        error = self.request.GET.get("error")
        if error:
            detail = self.request.GET.get("error_description") or error
            return _failure(self.request, f"The identity provider did not sign you in: {detail}")
        if not messages.get_messages(self.request):
            return _failure(self.request, "Single sign-on did not complete; please try again.")
        return HttpResponseRedirect(reverse("frontend:login"))


# Never sent to the provider for a refresh: API calls and htmx fragments cannot follow a redirect to a sign-in
# page (the next full page does the refresh), nor can the sign-in pages themselves.
_NOT_REFRESHED = ("/api/", "/oidc/", "/login/", "/logout/", "/metrics", "/healthz", "/static/")


class SessionRefresh(mozilla_middleware.SessionRefresh):
    """Every ``LOOM_OIDC_RENEW_SECONDS``, a page request of a single-sign-on session goes past the provider
    again (``prompt=none``, no page shown while its session lasts), which applies the groups claim again. So
    removing someone from a group ends their access within that time even if they never sign out, and a
    session the provider ended (``login_required``) signs them out of Loom. Password sessions are untouched.
    """

    get_settings = staticmethod(oidc_setting)
    OIDC_OP_AUTHORIZATION_ENDPOINT = _setting_property("OIDC_OP_AUTHORIZATION_ENDPOINT")
    OIDC_RP_CLIENT_ID = _setting_property("OIDC_RP_CLIENT_ID")
    OIDC_RP_SCOPES = _setting_property("OIDC_RP_SCOPES")

    def __init__(self, get_response: Any) -> None:
        # Not the library's __init__: it would read the endpoints (so fetch discovery) as the server starts.
        MiddlewareMixin.__init__(self, get_response)
        self.OIDC_EXEMPT_URLS: list[Any] = []
        self.OIDC_STATE_SIZE = 32
        self.OIDC_AUTHENTICATION_CALLBACK_URL = "oidc_authentication_callback"
        self.OIDC_USE_NONCE = True
        self.OIDC_NONCE_SIZE = 32

    @cached_property
    def exempt_urls(self) -> set[str]:
        return set()  # _NOT_REFRESHED instead: the library's list names a logout view Loom does not have

    def process_request(self, request: HttpRequest) -> HttpResponse | None:
        if not enabled() or request.headers.get("HX-Request") or request.path.startswith(_NOT_REFRESHED):
            return None
        try:
            return super().process_request(request)
        except ProviderUnavailable as exc:
            # The session stays for now (the provider blipped, the user did nothing wrong); try again shortly.
            logger.warning("single sign-on session refresh postponed: %s", exc)
            request.session["oidc_id_token_expiration"] = time.time() + 60
            return None


def sign_in_options(request: HttpRequest) -> dict[str, Any]:
    """Template context for the sign-in pages: the single sign-on button and whether passwords are taken."""
    button = {"name": settings.LOOM_OIDC_NAME, "url": reverse("oidc_authentication_init")}
    return {
        "loom_sso": button if enabled() else None,
        "loom_password_login": settings.LOOM_PASSWORD_LOGIN,
    }
