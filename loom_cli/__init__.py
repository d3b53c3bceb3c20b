"""``loom``: the command-line client of Loom's REST API (standard library only, so it installs anywhere)."""

__version__ = "0.1.0"
