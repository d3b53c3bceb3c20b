"""Clusters: from a template and a size to live machines, and every change after that.

The folder is the design, read from the bottom up (each layer imports only the ones below it;
``tests/test_layering.py`` keeps it so):

- ``planning/``  pure Python: the solver places services on nodes, the planner turns an operation into a task DAG.
- ``models.py``  the rows: clusters, nodes, jobs, tasks, attempts, webhooks.
- ``engine/``    runs a plan: persist, claim, finish, dispatch, heartbeats, janitor, reaper, the Celery tasks.
- ``features/``  leases, webhooks, metering and job hooks, around the engine but not part of it.
- ``services/``, ``selectors.py``  what a user may do and see: create, day-2 operations, preview, lease expiry.
- faces: ``api.py``, ``serializers.py``, ``admin.py``, ``*_api.py``, ``tasks.py`` (Celery's registry only).
"""
