"""Cluster models arrive with the engine issue; the app exists so the project layout is complete."""
