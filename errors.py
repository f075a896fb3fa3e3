"""The exception types users see, and the one place expected faults become a sentence.

Every command runs under `sa.clikit.friendly`, which prints an `SAError` as one
red line (no traceback) and exits with its code. Faults of the environment
(a full disk, a permission, missing credentials, Ctrl-C) are not bugs either:
`explain` turns each into an `SAError` here, so no command keeps its own copy
of that try/except.
"""

from __future__ import annotations

import errno
import os


class SAError(Exception):
    """Bad input or state; the message names the file/array/option and what to do.

    The CLI prints the message (no traceback) and exits with status 2.
    """

    exit_code = 2


class DamagedError(SAError):
    """A file or array exists but its content is damaged (truncated download, bad digest): exit 1."""

    exit_code = 1


class Interrupted(SAError):
    """The user pressed Ctrl-C; what was finished is kept and a rerun resumes."""

    exit_code = 130


def _where(exc: OSError) -> str:
    name = exc.filename or ""
    return f" ({name})" if name else ""


def _disk_free(path: str | os.PathLike | None) -> str:
    """' (N GiB free there)' for a local path, '' when it cannot be told."""
    import shutil

    probe = str(path or ".")
    while probe and not os.path.exists(probe):
        parent = os.path.dirname(probe)
        if parent == probe:
            break
        probe = parent
    try:
        free = shutil.disk_usage(probe or ".").free
    except OSError:
        return ""
    return f"; {free / 2**30:.2f} GiB free there"


_OS_SENTENCES = {
    errno.ENOSPC: "no space left on the device while writing{where}{free}: free some space and rerun the same command; "
                  "finished work is kept and the job resumes where it stopped",
    errno.EDQUOT: "disk quota exceeded while writing{where}: free some space or raise the quota and rerun the same "
                  "command; finished work is kept and the job resumes",
    errno.EFBIG: "a file grew past the file-size limit (ulimit -f) while writing{where}: raise the limit and rerun "
                 "the same command; finished work is kept and the job resumes",
    errno.EROFS: "read-only file system{where}: choose a writable location",
    errno.EACCES: "permission denied{where}: choose a location you can write, or fix its permissions",
    errno.EPERM: "operation not permitted{where}: choose a location you can write, or fix its permissions",
    errno.ENOENT: "no such file or directory{where}: check the path",
    errno.ENOTDIR: "a path component is a file, not a folder{where}: check the path",
    errno.EISDIR: "expected a file but found a folder{where}: check the path",
    errno.ENAMETOOLONG: "file name too long{where}",
    errno.EMFILE: "too many open files: raise `ulimit -n` and rerun",
    errno.ECONNREFUSED: "connection refused{where}: is the server running, and is the address right?",
}


def explain(exc: BaseException) -> SAError | None:
    """The one sentence for an expected fault of the environment; None when `exc` is a bug to show in full."""
    if isinstance(exc, SAError):
        return exc
    if isinstance(exc, KeyboardInterrupt):
        return Interrupted("interrupted: what was finished is kept; rerun the same command to resume")
    name = type(exc).__name__
    if name in {"NoCredentialsError", "PartialCredentialsError", "CredentialRetrievalError",
                "DefaultCredentialsError", "RefreshError"}:
        return SAError(f"no usable cloud credentials ({name}): configure them (for S3: AWS_ACCESS_KEY_ID/"
                       "AWS_SECRET_ACCESS_KEY or ~/.aws/credentials; for GCS: `gcloud auth application-default "
                       "login`), or use anonymous access if the bucket is public")
    if isinstance(exc, UnicodeDecodeError):
        return SAError(f"a file that should be text is not ({exc.reason} at byte {exc.start}): is it the right file?")
    if isinstance(exc, MemoryError):
        return SAError("out of memory: use fewer subjects, layers or a smaller --batch-size, or a bigger machine")
    if isinstance(exc, OSError) and exc.errno in _OS_SENTENCES:
        text = _OS_SENTENCES[exc.errno].format(
            where=_where(exc),
            free=_disk_free(exc.filename) if exc.errno == errno.ENOSPC else "")
        return SAError(text[0].upper() + text[1:] + ".")
    return None
