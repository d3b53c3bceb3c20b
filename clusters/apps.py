from django.apps import AppConfig


class ClustersConfig(AppConfig):
    name = "clusters"
    verbose_name = "Clusters"

    def ready(self) -> None:
        from django.db.models.signals import post_migrate

        from clusters.engine.pg_functions import install_engine_functions

        # The engine's PL/pgSQL hot path follows the code it belongs to: reinstalled on every migrate.
        post_migrate.connect(install_engine_functions, sender=self, dispatch_uid="clusters.engine_functions")
        # Webhooks hear of job events through the engine's signal; the engine knows nothing of them.
        from clusters.engine.signals import job_event
        from clusters.features.webhooks import on_job_event

        job_event.connect(on_job_event, dispatch_uid="clusters.features.webhooks.on_job_event")
