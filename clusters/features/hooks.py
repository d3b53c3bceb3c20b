"""The Python hook interface: site code that may veto a job before it starts.

``LOOM_JOB_HOOKS`` lists dotted paths of callables. Each is called with a ``JobRequest`` before any job
(create, delete, day-2 operation, retry) is stored, and vetoes it by raising ``JobVetoed("why")``; the user
gets a 409 with that reason, and nothing is created. Typical uses: a change freeze, a cost check against a
budget system, "no deletes of clusters tagged production". Hooks run in the request, inside its
transaction, so they must be quick; for reacting to what happened afterwards, use webhooks or the
``clusters.engine.signals.job_event`` signal instead.

A hook that fails with any other exception also stops the job (fail closed: a broken policy check must not
wave everything through), and the error is logged.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from typing import Any

from django.conf import settings
from django.utils.module_loading import import_string

from tenants.errors import Conflict
from tenants.models import Tenant

logger = logging.getLogger(__name__)


class JobVetoed(Exception):
    """Raised by a hook to refuse a job; the message is shown to the user."""


@dataclass(frozen=True)
class JobRequest:
    tenant: Tenant
    user: Any
    operation: str
    cluster_name: str
    cluster_id: int | None = None
    size: int | None = None
    template: str = ""
    services: tuple[str, ...] = ()


@cache
def _hooks(paths: tuple[str, ...]) -> list[Callable[[JobRequest], object]]:
    return [import_string(path) for path in paths]


def job_hooks() -> list[Callable[[JobRequest], object]]:
    return _hooks(tuple(getattr(settings, "LOOM_JOB_HOOKS", ())))


def check_job_start(request: JobRequest) -> None:
    """Run every hook; raises Conflict naming the hook's reason when one vetoes the job."""
    for hook in job_hooks():
        name = getattr(hook, "__qualname__", repr(hook))
        try:
            hook(request)
        except JobVetoed as veto:
            raise Conflict(f"{request.operation} of cluster {request.cluster_name} was refused: {veto}") from veto
        except Exception as error:
            logger.exception("job hook %s failed", name, extra={"operation": request.operation})
            raise Conflict(
                f"{request.operation} of cluster {request.cluster_name} was refused: policy hook {name} failed"
            ) from error
