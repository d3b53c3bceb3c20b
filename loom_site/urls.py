"""Top-level routes: the admin, the v2 API, and the self-service pages."""

from django.contrib import admin
from django.http import HttpRequest, JsonResponse
from django.urls import include, path

from loom_site.metrics import metrics_view
from tenants import sso


def healthz(request: HttpRequest) -> JsonResponse:
    """Liveness for scripts and load balancers; says nothing about tenants."""
    return JsonResponse({"status": "ok"})


urlpatterns = [
    path("admin/", admin.site.urls),
    path("api/v2/", include("loom_site.api_urls")),
    path("api/v2/auth/", include("rest_framework.urls")),  # log in/out links of the browsable API
    # Single sign-on (OpenID Connect); both answer 404 unless LOOM_OIDC_ISSUER is set.
    path("oidc/authenticate/", sso.SignInView.as_view(), name="oidc_authentication_init"),
    path("oidc/callback/", sso.CallbackView.as_view(), name="oidc_authentication_callback"),
    path("healthz", healthz, name="healthz"),
    path("metrics", metrics_view, name="metrics"),
    path("", include("frontend.urls")),
]

handler404 = "loom_site.views.not_found"
handler500 = "loom_site.views.server_failure"
