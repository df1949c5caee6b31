"""User-facing errors.

Every problem a user can cause (a bad path, a malformed file, an option out of range) raises
:class:`DgmPyroError` with a one-line message naming the problem and how to fix it. The CLI turns it
into that line on stderr and exit code 2, without a traceback.
"""

__all__ = ["DgmPyroError"]


class DgmPyroError(ValueError):
    """An error caused by user input; its message is one line meant for the user."""
