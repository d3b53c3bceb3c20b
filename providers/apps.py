from django.apps import AppConfig


class ProvidersConfig(AppConfig):
    name = "providers"
    verbose_name = "Providers and plugins"

    def ready(self) -> None:
        # Plugin types are registered in code; importing the module registers them with the catalog's
        # plugin registry, and the providers catalog kind with import/export.
        from . import catalog_kind, plugin_specs  # noqa: F401
