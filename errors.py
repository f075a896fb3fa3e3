"""The exception types users see, and the one place expected faults become a sentence.

Every command runs under `sa.clikit.friendly`, which prints an `SAError` as one
red line (no traceback) and exits with its code. Faults of the environment
(a full disk, a permission, missing credentials, an unreachable server,
Ctrl-C) are not bugs either: `explain` turns each into an `SAError` here, so no
command keeps its own copy of that try/except. Code that writes and knows how
much it still has to write wraps the writing in `writing(where, needed)`, so a
full disk names the place and the space needed. docs/faults.md lists the
promise made for each fault class.

Exit codes: 2 bad input or environment (`SAError`), 1 damaged data or failed
verification (`DamagedError`), 130 Ctrl-C (`Interrupted`).
"""

from __future__ import annotations

import contextlib
import errno
import os
from typing import Iterator


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


def size_text(nbytes: float) -> str:
    """Human-readable bytes, e.g. '1.2 GB' (powers of 1000, as `df -H` and `sa cache ls` print them)."""
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(nbytes) < 1000 or unit == "TB":
            return f"{nbytes:.0f} {unit}" if unit == "B" else f"{nbytes:.1f} {unit}"
        nbytes /= 1000
    return f"{nbytes:.1f} TB"


def _disk_free(path: str | os.PathLike | None) -> int | None:
    """Free bytes on the local file system holding `path` (or its nearest existing parent); None when unknown."""
    import shutil

    probe = os.fspath(path) if path else ""
    if not probe or "://" in probe:
        return None
    while probe and not os.path.exists(probe):
        parent = os.path.dirname(probe)
        if parent == probe:
            break
        probe = parent
    try:
        return shutil.disk_usage(probe or ".").free
    except OSError:
        return None


_OS_SENTENCES = {
    errno.ENOSPC: "no space left on the device while writing{path}{space}: free some space and rerun the same command{tail}",
    errno.EDQUOT: "disk quota exceeded while writing{path}{space}: free some space or raise the quota and rerun the same "
                  "command{tail}",
    errno.EFBIG: "a file grew past the file-size limit (ulimit -f) while writing{path}{space}: raise the limit and rerun "
                 "the same command{tail}",
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
_SPACE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})
_RESUME_TAIL = "; finished work is kept and the job resumes where it stopped"
_RESTART_TAIL = "; nothing half-written was kept"

_CREDENTIAL_ERRORS = frozenset({"NoCredentialsError", "PartialCredentialsError", "CredentialRetrievalError",
                                "DefaultCredentialsError", "RefreshError", "NoAuthTokenError"})
# botocore / aiohttp / requests names for "the server could not be reached" (matched by name: optional packages)
_UNREACHABLE_ERRORS = frozenset({"EndpointConnectionError", "ConnectTimeoutError", "ReadTimeoutError",
                                 "ConnectionClosedError", "ProxyConnectionError", "ClientConnectorError",
                                 "ClientConnectorDNSError", "ServerDisconnectedError", "ServerTimeoutError",
                                 "ClientOSError", "InvalidUrlClientError", "NonHttpUrlClientError", "ConnectionError",
                                 "FSTimeoutError"})


def _sentence(text: str) -> str:
    """Capitalise and end with a period."""
    text = text.strip()
    return text[0].upper() + text[1:] + ("" if text.endswith((".", "?")) else ".")


def _server_of(exc: BaseException) -> str:
    """The host or URL an unreachable-server error names, '' when it names none."""
    kwargs = getattr(exc, "kwargs", None) or {}
    if kwargs.get("endpoint_url"):
        return str(kwargs["endpoint_url"])
    host, port = getattr(exc, "host", None), getattr(exc, "port", None)
    if host:
        return f"{host}:{port}" if port else str(host)
    url = getattr(exc, "url", None)
    return str(url) if url else ""


def _unreachable(exc: BaseException) -> bool:
    """True for errors meaning a server could not be reached or stopped answering."""
    names = {cls.__name__ for cls in type(exc).__mro__}
    if names & _UNREACHABLE_ERRORS and type(exc) is not ConnectionRefusedError:
        return type(exc).__module__.split(".")[0] in {"botocore", "aiohttp", "aiobotocore", "requests", "urllib3",
                                                       "fsspec", "builtins", "asyncio"}
    return isinstance(exc, TimeoutError)


def _space_detail(exc: OSError, where: str | None, needed: int | None) -> str:
    """' (this needs about X; Y free there)' for a full disk / file-size limit, '' when nothing is known."""
    parts = []
    if needed:
        parts.append(f"this needs about {size_text(needed)}")
    if exc.errno != errno.EFBIG:
        free = _disk_free(exc.filename or where)
        if free is not None:
            parts.append(f"{size_text(free)} free there")
    return f" ({'; '.join(parts)})" if parts else ""


def explain(exc: BaseException, *, where: str | None = None, needed: int | None = None,
            resumes: bool = True) -> SAError | None:
    """The one sentence for an expected fault of the environment; None when `exc` is a bug to show in full.

    `where` names the file or folder being written when the error itself does not; `needed` is the number of
    bytes the interrupted write still needed (said for a full disk or a file-size limit); `resumes=False` for a
    write that is thrown away and redone whole (an export file) rather than resumed.
    """
    if isinstance(exc, SAError):
        return exc
    if isinstance(exc, KeyboardInterrupt):
        return Interrupted("Interrupted: what was finished is kept; rerun the same command to resume.")
    name = type(exc).__name__
    if name in _CREDENTIAL_ERRORS:
        return SAError(f"No usable cloud credentials ({name}): configure them (for S3: AWS_ACCESS_KEY_ID/"
                       "AWS_SECRET_ACCESS_KEY or ~/.aws/credentials; for GCS: `gcloud auth application-default "
                       "login`), or use anonymous access if the bucket is public.")
    if _unreachable(exc):
        server = _server_of(exc)
        detail = f"{name}: {exc}" if str(exc) else name
        return SAError(_sentence(f"cannot reach the server{' ' + server if server else ''} ({detail}): check the "
                                 f"address and the network, and that the server is running, then rerun the same command"))
    status = getattr(exc, "status", None)
    if name == "ClientResponseError" and status:  # aiohttp (HTTP roots): the server answered, but not with the file
        url = getattr(getattr(exc, "request_info", None), "real_url", "") or ""
        return SAError(_sentence(f"the server answered HTTP {status} ({getattr(exc, 'message', '') or 'error'})"
                                 f"{' for ' + str(url) if url else ''}: check the URL and that the server lets you read it, "
                                 f"then rerun the same command"))
    if isinstance(exc, UnicodeDecodeError):
        return SAError(f"A file that should be text is not ({exc.reason} at byte {exc.start}): is it the right file?")
    if isinstance(exc, MemoryError):
        return SAError("Out of memory: use fewer subjects, layers or a smaller --batch-size, or a bigger machine.")
    if not isinstance(exc, OSError):
        return None
    shown = exc.filename or where
    if exc.errno in _OS_SENTENCES:
        return SAError(_sentence(_OS_SENTENCES[exc.errno].format(
            where=f" ({shown})" if shown else "", path=f" {shown}" if shown else "",
            tail=_RESUME_TAIL if resumes else _RESTART_TAIL,
            space=_space_detail(exc, where, needed) if exc.errno in _SPACE_ERRNOS else "")))
    if isinstance(exc, PermissionError):  # object stores: access denied, expired or invalid keys (no errno)
        detail = str(exc) or name
        return SAError(_sentence(f"access denied{f' to {shown}' if shown else ''} ({detail}): check that your credentials "
                                 f"are valid and allowed to read (and, to write, write) that location"))
    if isinstance(exc, FileNotFoundError):  # fsspec: a missing object or URL (no errno)
        return SAError(_sentence(f"not found: {exc.filename or exc or shown}; check the path or URL"))
    return None


@contextlib.contextmanager
def writing(where: str, needed: int | None = None, *, resumes: bool = True) -> Iterator[None]:
    """Run code that writes `where`; a full disk, quota or file-size limit in it becomes one sentence naming `where`
    and the `needed` bytes (other errors pass through unchanged). `resumes`: see `explain`."""
    try:
        yield
    except OSError as exc:
        if exc.errno not in _SPACE_ERRNOS:
            raise
        raise explain(exc, where=where, needed=needed, resumes=resumes) from None  # type: ignore[misc]
