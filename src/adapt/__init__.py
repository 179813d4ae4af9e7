"""adapt: shared runtime of the `adapt` CLI and its two packages, fa_adapt and capkit.

This package holds only what both packages use: the root Typer app, the user-error type
that the CLI turns into a one-line message, and the run-folder helpers (atomic writes,
config/metrics/summary files, loss plots).
"""

__version__ = "0.1.0"
