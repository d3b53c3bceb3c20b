"""Cluster features around the engine: leases (the policy), webhooks, usage metering, job veto hooks.

Each hears of jobs through the engine's signals or is asked by the services; the engine knows none of them.
May import ``engine``, ``planning`` and ``models`` (and the other apps); never services or faces.
"""
