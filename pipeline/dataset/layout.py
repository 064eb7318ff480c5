"""Every path and key rule of a stored dataset, in one place.

```
<root>/manifest.json                           compaction of the commit records
<root>/_commits/<kind>/<hash>-<nonce>.json     one small record per finished unit / patch entry
<root>/_lease/compaction.json                  compaction lease, only while a compaction runs
<root>/entropies/part-<hash>.arrow             one entropy shard per work unit
<root>/patches/<params-key>/part-<hash>.arrow  one patch shard per work unit and patch set
<root>/stats.json, <root>/dashboard.html       statistics and their rendering
```

A work unit's key is its input URL, plus ``#rg<a>-<b>`` (parquet row groups) or ``#b<a>-<b>`` (byte range).
Paths here are relative to the dataset root; callers ``join`` them with it.
"""

from __future__ import annotations

import hashlib
import re

MANIFEST_NAME = "manifest.json"
COMMITS_DIR = "_commits"
LEASE_PATH = "_lease/compaction.json"
ENTROPIES_DIR = "entropies"
PATCHES_DIR = "patches"
STATS_NAME = "stats.json"
DASHBOARD_NAME = "dashboard.html"

_UNIT_SUFFIX = re.compile(r"#(?:rg|b)\d+-(?:\d+|None)$")
_UNIT_KIND_TAG = {"row_groups": "rg", "bytes": "b"}


def digest(text: str) -> str:
    """16 hex digits of sha1: the stable short name of a unit key (or any record name) in file names."""
    return hashlib.sha1(text.encode()).hexdigest()[:16]


def shard_file_name(unit_key: str) -> str:
    """Deterministic output name for a work unit, so a re-run overwrites, not duplicates."""
    return f"part-{digest(unit_key)}.arrow"


def entropy_shard_path(unit_key: str) -> str:
    return f"{ENTROPIES_DIR}/{shard_file_name(unit_key)}"


def patch_set_dir(params_key: str) -> str:
    return f"{PATCHES_DIR}/{params_key}"


def patch_shard_path(params_key: str, unit_key: str) -> str:
    return f"{patch_set_dir(params_key)}/{shard_file_name(unit_key)}"


def commit_record_path(kind: str, name: str, nonce: str) -> str:
    return f"{COMMITS_DIR}/{kind}/{digest(name)}-{nonce}.json"


def unit_key(input_url: str, kind: str, start: int, stop: int | None) -> str:
    """``kind`` "file" -> the URL itself; "row_groups" / "bytes" -> URL plus ``#rg<a>-<b>`` / ``#b<a>-<b>``."""
    if kind == "file":
        return input_url
    return f"{input_url}#{_UNIT_KIND_TAG[kind]}{start}-{stop}"


def input_url_of(unit_key: str) -> str:
    """A work unit key (``s3://b/raw/x.parquet#rg0-2``) -> its input object URL; a whole-object key is the URL
    itself, even when the URL holds a ``#``."""
    return _UNIT_SUFFIX.sub("", unit_key)
