"""The mtqpgw benchmark (issue 7): run with ``python -m bench`` from the repository root.

Not part of the installed package and not run by CI.  It starts the daemon,
the raw Twisted ceilings of ``../shared/bench`` and its own load generators
on loopback only, and reports each figure next to the ceiling measured in
the same run.  See docs/performance.md.
"""
