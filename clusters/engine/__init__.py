"""The engine: runs a persisted plan to its end, whatever workers die or messages are lost.

``core`` persists plans, claims and finishes tasks (``pg_functions`` is its PL/pgSQL hot path), ``dispatch``
and ``local_dispatch`` hand ready tasks to workers, ``runner`` and ``automation`` do a task's work through the
providers, ``janitor``/``reaper``/``heartbeat`` recover, ``state`` is the one state machine. Imports
``planning``, ``models``, ``providers``, ``templates_app`` and ``tenants``; never features, services or faces.
"""
