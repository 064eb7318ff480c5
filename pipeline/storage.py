"""Object storage through fsspec: URL parsing, listing with checksums, atomic writes.

Atomicity: on S3 an object becomes visible only when its upload completes, so a direct write is atomic;
on a local filesystem we write ``<path>.tmp-<uuid>`` and rename. Readers only trust files that the
manifest lists, so a half-finished job never exposes partial output.
"""

from __future__ import annotations

import contextlib
import os
import posixpath
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import IO

import fsspec
from fsspec.implementations.local import LocalFileSystem


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


def list_inputs(pattern: str) -> list[InputObject]:
    """Expand a glob (or a single object, or a directory) into objects with size and etag, sorted."""
    fs, path = filesystem(pattern)
    prefix = _protocol_prefix(pattern)
    try:
        if fs.isdir(path):
            paths = [p for p in fs.find(path) if not fs.isdir(p)]
        elif any(ch in path for ch in "*?["):
            paths = fs.glob(path)
        elif fs.exists(path):
            paths = [path]
        else:
            paths = []
    except PermissionError as exc:
        raise StorageError(f"access denied listing {pattern}: check your credentials ({exc})") from None
    except OSError as exc:
        raise StorageError(f"cannot list {pattern}: {exc}") from None
    if not paths:
        raise StorageError(f"no input objects match {pattern}")
    objects = []
    for p in sorted(paths):
        info = fs.info(p)
        etag = str(info.get("ETag") or info.get("etag") or f"{info.get('size')}-{info.get('mtime', info.get('LastModified', ''))}")
        objects.append(InputObject(url=prefix + p if prefix else p, size=int(info.get("size") or 0), etag=etag.strip('"')))
    return objects


@contextlib.contextmanager
def atomic_open(url: str) -> Iterator[IO[bytes]]:
    """Open ``url`` for writing so that readers see either the old object or the complete new one."""
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
    else:
        with fs.open(path, "wb") as handle:
            yield handle


def write_bytes_atomic(url: str, data: bytes) -> None:
    with atomic_open(url) as handle:
        handle.write(data)


def read_bytes(url: str) -> bytes:
    fs, path = filesystem(url)
    with fs.open(path, "rb") as handle:
        return handle.read()


def exists(url: str) -> bool:
    fs, path = filesystem(url)
    return fs.exists(path)
