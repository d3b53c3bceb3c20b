"""The pure planning cores: specs (the frozen inputs), solver (layout), planner (task DAG), macros, naming.

No Django, no database, no I/O: each takes frozen dataclasses and returns new ones, so every case is a fast
unit test. May import only the standard library, itself and ``templates_app.macro_syntax``.
"""
