"""fsspec URLs as cache roots: which package each protocol needs, and which protocols are read-only or unlistable.

HTTP(S) roots are served by a static file server (e.g. `python -m http.server`
over the cache folder): they cannot be written and have no listing API zarr can
use, so the cache reads them by known paths only and lists groups from the
lab index (`sa-index.json`, see sa.cache.index). Object stores (s3://, gs://)
can be listed and written. A protocol whose fsspec package is missing gets an
SAError naming the `sa` extra that installs it.
"""

from __future__ import annotations

from typing import Any

from sa.errors import SAError

# protocol -> (optional extra of the sa package, the module it provides)
EXTRAS: dict[str, tuple[str, str]] = {
    "http": ("http", "aiohttp"), "https": ("http", "aiohttp"),
    "s3": ("s3", "s3fs"), "s3a": ("s3", "s3fs"),
    "gs": ("gcs", "gcsfs"), "gcs": ("gcs", "gcsfs"),
}
READ_ONLY_PROTOCOLS = frozenset({"http", "https"})
UNLISTABLE_PROTOCOLS = frozenset({"http", "https"})


def protocol_of(url: str) -> str:
    """The lower-case protocol of 'proto://...' ('file' for plain paths)."""
    return url.split("://", 1)[0].lower() if "://" in url else "file"


def is_read_only_protocol(url: str) -> bool:
    """True for protocols the cache never writes to (HTTP(S) static servers)."""
    return protocol_of(url) in READ_ONLY_PROTOCOLS


def is_listable_protocol(url: str) -> bool:
    """False for protocols without a directory listing the cache can rely on."""
    return protocol_of(url) not in UNLISTABLE_PROTOCOLS


def missing_package_error(url: str, exc: BaseException) -> SAError:
    """The SAError for a URL whose fsspec backend is not installed, naming the extra to install."""
    proto = protocol_of(url)
    extra, module = EXTRAS.get(proto, (None, None))
    if extra is None:
        return SAError(f"cannot open cache root {url}: {exc}; install the fsspec backend for {proto}:// or use a local path.")
    return SAError(f"reading {proto}:// cache roots such as {url} needs the optional package {module}; "
                   f"install it with `pip install 'sa[{extra}]'`.")


def url_to_fs(url: str, storage_options: dict[str, Any] | None = None) -> tuple[Any, str]:
    """(filesystem, path inside it) for `url`, with an SAError naming the extra when its package is missing."""
    import fsspec.core

    try:
        return fsspec.core.url_to_fs(url, **(storage_options or {}))
    except ImportError as exc:
        raise missing_package_error(url, exc) from None
    except ValueError as exc:
        raise SAError(f"cannot open cache root {url}: {exc}; check the URL (e.g. s3://bucket/path, https://host/path).") from None
