"""The one exception type users see: a sentence that names the thing and the fix."""

from __future__ import annotations


class SAError(Exception):
    """Bad input or state; the message names the file/array/option and what to do.

    The CLI prints the message (no traceback) and exits with status 2 (1 for a
    failed verification).
    """

    exit_code = 2
