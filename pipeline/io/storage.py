"""Object storage through fsspec: URL parsing, paged listing with checksums, atomic writes, retries.

Atomicity: a streamed write on S3 goes up as an *uncommitted* multipart upload that is completed only when the
writer finishes and aborted when it fails, so a failed write leaves nothing at its final key (fsspec's plain
``__exit__`` would complete a partial upload). Small whole-object writes are one PUT, which S3 applies
atomically. On a local filesystem we write ``<path>.tmp-<uuid>`` and rename. Readers only trust what the
manifest lists, so a half-finished job never exposes partial output.

Transient errors (HTTP 5xx, throttling, connection resets) are retried with backoff by botocore (standard
retry mode, ``S3_MAX_ATTEMPTS`` attempts, set for every s3fs instance through fsspec's config) and by s3fs's
own retry loop (throttling, payload errors); ``is_transient`` lets callers retry a
whole task on what is left.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import os
import posixpath
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import IO

import fsspec
import fsspec.asyn
import fsspec.config
from fsspec.implementations.local import LocalFileSystem

S3_MAX_ATTEMPTS = int(os.environ.get("BLT_S3_MAX_ATTEMPTS", "10"))


def _configure_s3_retries() -> None:
    """Defaults for every s3fs instance made through fsspec in this process (explicit kwargs still win)."""
    defaults = fsspec.config.conf.setdefault("s3", {})
    config_kwargs = defaults.setdefault("config_kwargs", {})
    config_kwargs.setdefault("retries", {"max_attempts": S3_MAX_ATTEMPTS, "mode": "standard"})


_configure_s3_retries()


class StorageError(RuntimeError):
    """A storage problem a user can act on (missing path, denied access); printed as one line."""


def filesystem(url: str) -> tuple[fsspec.AbstractFileSystem, str]:
    """(filesystem, path without protocol) for any fsspec URL or local path."""
    fs, path = fsspec.core.url_to_fs(url)
    return fs, path


def join(url: str, *parts: str) -> str:
    return posixpath.join(url.rstrip("/"), *parts)


def is_local(fs: fsspec.AbstractFileSystem) -> bool:
    return isinstance(fs, LocalFileSystem)


@dataclass(frozen=True)
class InputObject:
    url: str
    size: int
    etag: str  # S3 ETag, or size+mtime for local files: changes when the object changes


def _protocol_prefix(url: str) -> str:
    return url.split("://", 1)[0] + "://" if "://" in url else ""


def _etag(info: dict) -> str:
    etag = info.get("ETag") or info.get("etag")
    if not etag:
        etag = f"{info.get('size')}-{info.get('mtime', info.get('LastModified', ''))}"
    return str(etag).strip('"')


def _is_file(info: dict) -> bool:
    return info.get("type", "file") == "file" and not info.get("name", "").endswith("/")


def list_detailed(url: str) -> dict[str, dict]:
    """URL -> info (size, ETag) for every object under ``url``, from the paginated LIST: one call, about one
    request per 1,000 objects on S3, never one per object. A missing prefix is an empty dict."""
    fs, path = filesystem(url)
    prefix = _protocol_prefix(url)
    try:
        found = fs.find(path, detail=True, withdirs=False)
    except FileNotFoundError:
        return {}
    return {prefix + p: info for p, info in found.items() if _is_file(info)}


def list_inputs(pattern: str) -> list[InputObject]:
    """Expand a glob (or a single object, or a directory) into objects with size and etag, sorted.

    Size and ETag come from the paginated listing (``find``/``glob`` with ``detail=True``): a prefix of N objects
    costs about N/1000 requests on S3, never one request per object."""
    fs, path = filesystem(pattern)
    prefix = _protocol_prefix(pattern)
    try:
        if any(ch in path for ch in "*?["):
            found = fs.glob(path, detail=True)
        else:
            try:
                info = fs.info(path)
            except FileNotFoundError:
                info = None
            if info is None:
                found = {}
            elif info.get("type") == "directory":
                found = fs.find(path, detail=True, withdirs=False)
            else:
                found = {path: info}
    except PermissionError as exc:
        raise StorageError(f"access denied listing {pattern}: check your credentials ({exc})") from None
    except OSError as exc:
        raise StorageError(f"cannot list {pattern}: {exc}") from None
    objects = [
        InputObject(url=prefix + p if prefix else p, size=int(info.get("size") or 0), etag=_etag(info))
        for p, info in sorted(found.items()) if _is_file(info)
    ]
    if not objects:
        raise StorageError(f"no input objects match {pattern}")
    return objects


@contextlib.contextmanager
def atomic_open(url: str) -> Iterator[IO[bytes]]:
    """Open ``url`` for writing so that readers see either the old object or the complete new one.

    If the body raises, nothing is left at ``url`` (local: the temp file is removed; S3: the multipart upload is
    aborted, never completed)."""
    fs, path = filesystem(url)
    if is_local(fs):
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        tmp = f"{path}.tmp-{uuid.uuid4().hex}"
        try:
            with open(tmp, "wb") as handle:
                yield handle
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)
        return
    handle = fs.open(path, "wb", autocommit=False)
    try:
        yield handle
        handle.close()  # uploads the last part; the object is still invisible
        handle.commit()
    except BaseException:
        with contextlib.suppress(Exception):
            handle.discard()  # abort the multipart upload: nothing appears at the key
        handle.closed = True  # so that garbage collection does not try to finish the upload
        raise
    finally:
        with contextlib.suppress(Exception):
            fs.invalidate_cache(path)


def write_bytes_atomic(url: str, data: bytes) -> None:
    """One small object, all or nothing (local: temp file + rename; S3: a single PUT)."""
    fs, path = filesystem(url)
    if is_local(fs):
        with atomic_open(url) as handle:
            handle.write(data)
    else:
        fs.pipe_file(path, data)


@dataclass(frozen=True)
class Versioned:
    """An object's content with the version tag a conditional write must name (S3 ETag; local: content hash)."""

    data: bytes
    etag: str


def _content_etag(data: bytes) -> str:
    return hashlib.md5(data, usedforsecurity=False).hexdigest()


@contextlib.contextmanager
def _local_cas_lock(path: str) -> Iterator[None]:
    """Serialise conditional writes to one local file across processes (flock on a sibling lock file)."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(f"{path}.lock", "a+b") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def _s3_error_code(exc: BaseException) -> str:
    cause = exc.__cause__ or exc.__context__
    response = getattr(cause, "response", None) or getattr(exc, "response", None) or {}
    return str(response.get("Error", {}).get("Code", ""))


def _condition_failed(exc: BaseException) -> bool:
    """412 (the ETag moved on / the key exists), 409 (a concurrent conditional write won) or 404 (gone)."""
    if isinstance(exc, (FileExistsError, FileNotFoundError)):
        return True
    return _s3_error_code(exc) in {"PreconditionFailed", "412", "ConditionalRequestConflict", "409", "NoSuchKey"}


def read_versioned(url: str) -> Versioned | None:
    """Content and version tag from one GET (so the tag names exactly the content read); None if missing."""
    fs, path = filesystem(url)
    if is_local(fs):
        try:
            with open(path, "rb") as handle:
                data = handle.read()
        except FileNotFoundError:
            return None
        return Versioned(data, _content_etag(data))
    bucket, key, _ = fs.split_path(path)

    async def get() -> Versioned:
        response = await fs._call_s3("get_object", Bucket=bucket, Key=key)
        async with response["Body"] as body:
            data = await body.read()
        return Versioned(data, str(response["ETag"]).strip('"'))

    try:
        return fsspec.asyn.sync(fs.loop, get)
    except FileNotFoundError:
        return None


def put_conditional(url: str, data: bytes, if_match: str | None = None) -> str | None:
    """Write ``url`` only if nothing is there (``if_match`` None: S3 ``If-None-Match: *``) or only if its current
    version is ``if_match`` (S3 ``If-Match``); the new version tag, or None when the condition failed.

    Local disks: the check and the rename happen under an flock, so racing processes see one winner."""
    fs, path = filesystem(url)
    if is_local(fs):
        with _local_cas_lock(path):
            try:
                with open(path, "rb") as handle:
                    current = _content_etag(handle.read())
            except FileNotFoundError:
                current = None
            if current != if_match:
                return None
            with atomic_open(url) as handle:
                handle.write(data)
        return _content_etag(data)
    bucket, key, _ = fs.split_path(path)
    condition = {"IfNoneMatch": "*"} if if_match is None else {"IfMatch": f'"{if_match}"'}
    try:
        response = fs.call_s3("put_object", Bucket=bucket, Key=key, Body=data, **condition)
    except OSError as exc:
        if _condition_failed(exc):
            return None
        raise
    finally:
        fs.invalidate_cache(path)
    return str(response["ETag"]).strip('"')


def delete_conditional(url: str, if_match: str) -> bool:
    """Delete ``url`` only if its current version is ``if_match`` (S3 ``If-Match``); False otherwise."""
    fs, path = filesystem(url)
    if is_local(fs):
        with _local_cas_lock(path):
            current = read_versioned(url)
            if current is None or current.etag != if_match:
                return False
            os.remove(path)
        return True
    bucket, key, _ = fs.split_path(path)
    try:
        fs.call_s3("delete_object", Bucket=bucket, Key=key, IfMatch=f'"{if_match}"')
    except OSError as exc:
        if _condition_failed(exc):
            return False
        raise
    finally:
        fs.invalidate_cache(path)
    return True


def credential_source(url: str) -> str:
    """Where the credentials used for ``url`` come from (botocore's method name, a profile), never a key."""
    fs, _ = filesystem(url)
    if is_local(fs):
        return f"local user uid={os.getuid()}"
    options = getattr(fs, "storage_options", {}) or {}
    if options.get("anon"):
        return "anonymous (anon=True)"
    if options.get("key") or options.get("secret") or options.get("token"):
        return "fsspec storage options (key/secret)"
    import botocore.session

    profile = options.get("profile") or os.environ.get("AWS_PROFILE")
    session = botocore.session.Session(profile=profile)
    credentials = session.get_credentials()
    if credentials is None:
        return "none found (unsigned requests)"
    return f"botocore {credentials.method}" + (f" (profile {profile})" if profile else "")


def read_bytes(url: str) -> bytes:
    """Whole object in one GET (no HEAD first); FileNotFoundError if missing."""
    fs, path = filesystem(url)
    return fs.cat_file(path) if is_local(fs) else fs.cat_file(path, max_concurrency=1)  # 1: no size HEAD first


def read_many(urls: list[str]) -> dict[str, bytes]:
    """url -> content for the objects that exist (concurrent GETs on S3); missing ones are left out."""
    if not urls:
        return {}
    fs, _ = filesystem(urls[0])
    paths = {filesystem(u)[1]: u for u in urls}
    found = fs.cat(list(paths), on_error="omit", **({} if is_local(fs) else {"max_concurrency": 1}))
    return {paths[p]: data for p, data in found.items() if isinstance(data, bytes)}


def delete_many(urls: Iterable[str]) -> None:
    """Delete objects (batched DeleteObjects on S3); already missing ones are fine."""
    urls = list(urls)
    if not urls:
        return
    fs, _ = filesystem(urls[0])
    paths = [filesystem(u)[1] for u in urls]
    if is_local(fs):
        for p in paths:
            with contextlib.suppress(FileNotFoundError):
                os.remove(p)
        return
    with contextlib.suppress(FileNotFoundError):
        fs.rm(paths)


def exists(url: str) -> bool:
    fs, path = filesystem(url)
    return fs.exists(path)


_TRANSIENT_ERRNOS = {errno.EIO, errno.ECONNRESET, errno.ECONNREFUSED, errno.ECONNABORTED, errno.ETIMEDOUT,
                     errno.EPIPE, errno.EAGAIN, errno.EBUSY}


def is_transient(exc: BaseException) -> bool:
    """Worth retrying the whole task: storage hiccups (5xx, throttling, resets, timeouts), not user errors."""
    exc = getattr(exc, "cause", None) or exc  # a Ray task error wraps the worker's exception
    if isinstance(exc, (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError)):
        return False
    if isinstance(exc, (ConnectionError, TimeoutError)):
        return True
    text = f"{type(exc).__name__} {exc}"
    markers = ("SlowDown", "InternalError", "ServiceUnavailable", "503", "500", "reduce your request rate",
               "Connection reset", "ServerDisconnected", "ClientPayloadError", "IncompleteRead", "Timeout",
               "EndpointConnectionError", "ConnectionClosed", "ResponseParserError")
    if any(m in text for m in markers):
        return True
    return isinstance(exc, OSError) and exc.errno in _TRANSIENT_ERRNOS
