from django.apps import AppConfig


class ProvidersConfig(AppConfig):
    name = "providers"
    verbose_name = "Providers and plugins"

    def ready(self) -> None:
        # Plugin types are registered in code; importing the module registers them with the catalog's
        # plugin registry, and the providers catalog kind with import/export. ``pool`` registers the
        # ``static:`` SSH credentials scheme, which every process that connects to nodes must resolve.
        from . import catalog_kind, plugin_specs, pool  # noqa: F401
