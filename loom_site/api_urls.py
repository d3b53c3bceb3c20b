"""Routes of the v2 API."""

from django.urls import include, path, re_path
from drf_spectacular.views import SpectacularAPIView, SpectacularRedocView, SpectacularSwaggerSplitView
from rest_framework.routers import DefaultRouter

from clusters import api as clusters_api
from clusters import metering_api, webhooks_api
from providers import pool_api, resources_api
from templates_app import api as catalog_api
from tenants import api as tenants_api


class LoomRouter(DefaultRouter):
    """Routes with or without a trailing slash, and no ``.json`` format suffixes: entity names may
    contain dots (``ubuntu-22.04``) and must not be mistaken for a format."""

    include_format_suffixes = False

    def __init__(self) -> None:
        super().__init__()
        self.trailing_slash = "/?"


router = LoomRouter()
router.register("tenants", tenants_api.TenantViewSet, basename="tenant")
router.register("memberships", tenants_api.MembershipViewSet, basename="membership")
router.register("tokens", tenants_api.ApiTokenViewSet, basename="apitoken")
router.register("audit-events", tenants_api.AuditEventViewSet, basename="auditevent")
router.register("providers", catalog_api.catalog_viewset("providers", catalog_api.ProviderFilter), basename="provider")
router.register(
    "hardwaretypes",
    catalog_api.catalog_viewset("hardwaretypes", catalog_api.ProviderMapFilter),
    basename="hardwaretype",
)
router.register(
    "imagetypes", catalog_api.catalog_viewset("imagetypes", catalog_api.ProviderMapFilter), basename="imagetype"
)
router.register("services", catalog_api.catalog_viewset("services"), basename="service")
router.register("clustertemplates", catalog_api.catalog_viewset("clustertemplates"), basename="clustertemplate")
router.register("partialtemplates", catalog_api.catalog_viewset("partialtemplates"), basename="partialtemplate")
router.register("plugins/providertypes", catalog_api.ProviderTypeViewSet, basename="providertype")
router.register("plugins/automatortypes", catalog_api.AutomatorTypeViewSet, basename="automatortype")
router.register("clusters", clusters_api.ClusterViewSet, basename="cluster")
router.register("jobs", clusters_api.JobViewSet, basename="job")
router.register("tasks", clusters_api.TaskViewSet, basename="task")
router.register("webhooks", webhooks_api.WebhookViewSet, basename="webhook")

# Plugin resources (loom-reference §2.4): /plugins/{pt}/{plugin}/{rt}[/{name}[/versions/{v}[/stage|recall|content]]]
_RESOURCE = r"^plugins/(?P<pt>automatortypes|providertypes)/(?P<plugin>[A-Za-z0-9_.-]+)/(?P<rt>[A-Za-z0-9_.-]+)"
_NAME = r"/(?P<name>[A-Za-z0-9_.-]+)"
_VERSION = r"/versions/(?P<version>[0-9]{1,9})"
plugin_resource_urls = [
    path("plugins/activate", resources_api.ResourcesActivateApi.as_view(), name="plugin-resources-activate"),
    re_path(_RESOURCE + r"/?$", resources_api.ResourceTypeApi.as_view(), name="plugin-resource-type"),
    re_path(_RESOURCE + _NAME + r"/?$", resources_api.ResourceApi.as_view(), name="plugin-resource"),
    re_path(_RESOURCE + _NAME + _VERSION + r"/?$", resources_api.ResourceVersionApi.as_view(),
            name="plugin-resource-version"),
    re_path(_RESOURCE + _NAME + _VERSION + r"/stage/?$", resources_api.ResourceStageApi.as_view(),
            name="plugin-resource-stage"),
    re_path(_RESOURCE + _NAME + _VERSION + r"/recall/?$", resources_api.ResourceRecallApi.as_view(),
            name="plugin-resource-recall"),
    re_path(_RESOURCE + _NAME + _VERSION + r"/content/?$", resources_api.ResourceContentApi.as_view(),
            name="plugin-resource-content"),
]  # fmt: skip

# Static host pools: /providers/{name}/hosts[/{id}] (before the router, whose provider routes end at {name}).
_POOL = r"^providers/(?P<name>[A-Za-z0-9_.-]+)/hosts"
pool_host_urls = [
    re_path(_POOL + r"/?$", pool_api.PoolHostListApi.as_view(), name="pool-hosts"),
    re_path(_POOL + r"/(?P<host_pk>[0-9]{1,18})/?$", pool_api.PoolHostApi.as_view(), name="pool-host"),
]

urlpatterns = [
    *plugin_resource_urls,
    *pool_host_urls,
    path("clusters/preview", clusters_api.ClusterPreviewApi.as_view(), name="cluster-preview"),
    path("usage/nodes", metering_api.NodeUsageApi.as_view(), name="usage-nodes"),
    path("export", catalog_api.CatalogExportApi.as_view(), name="catalog-export"),
    path("import", catalog_api.CatalogImportApi.as_view(), name="catalog-import"),
    path("schema", SpectacularAPIView.as_view(), name="schema"),
    # The split view serves Swagger UI's start-up script as a file: the Content-Security-Policy refuses inline script.
    path("docs", SpectacularSwaggerSplitView.as_view(url_name="schema"), name="swagger-ui"),
    path("redoc", SpectacularRedocView.as_view(url_name="schema"), name="redoc"),
    path("", include(router.urls)),
]
