from django.apps import AppConfig


class ClustersConfig(AppConfig):
    name = "clusters"
    verbose_name = "Clusters"

    def ready(self) -> None:
        # Webhooks hear of job events through the engine's signal; the engine knows nothing of them.
        from .signals import job_event
        from .webhooks import on_job_event

        job_event.connect(on_job_event, dispatch_uid="clusters.webhooks.on_job_event")
