"""The dataset manifest: the single source of truth for what exists under a dataset root.

Commits are O(1): every finished work unit (or patch-set entry, patch-set definition, dataset setting) is one
small, immutable record object ``<root>/_commits/<kind>/<hash>-<nonce>.json`` written atomically after its
output files. ``manifest.json`` is a *compaction* of those records, rewritten every so many commits (or
seconds) and at the end of a job; compaction takes a lease object (owner + expiry), re-reads and unions what is
stored with what it holds, writes ``manifest.json`` atomically and only then deletes the records it folded in.
``Manifest.load`` reads ``manifest.json`` and merges the records not compacted yet (one paged LIST of
``_commits/`` plus one GET per record), applying them in time order, so:

* a killed job leaves exactly its committed work visible (records are written after outputs);
* concurrent jobs never lose each other's commits (records never overwrite each other, compaction unions);
* readers (stats, loader) keep using ``.shards``, ``.patch_sets``, ``.default_patch_set``, ``.totals()``.

A dataset record that changes the entropy model clears every shard and patch set committed before it; records
made with another model id are ignored.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
import uuid
from dataclasses import asdict, dataclass, field

from pipeline.dataset.layout import COMMITS_DIR, LEASE_PATH, MANIFEST_NAME, commit_record_path
from pipeline.io.logs import get_logger
from pipeline.io.storage import (
    delete_conditional,
    delete_many,
    join,
    list_detailed,
    put_conditional,
    read_bytes,
    read_many,
    read_versioned,
    write_bytes_atomic,
)

MANIFEST_VERSION = 1
LEASE_SECONDS = float(os.environ.get("BLT_LEASE_SECONDS", "120"))
DATASET_FIELDS = ("entropy_model", "reader", "default_patch_set")

log = get_logger(__name__)


@dataclass
class ShardRecord:
    input_url: str  # the work unit's key (the input URL for a whole-file unit)
    size: int
    etag: str
    output: str  # relative to the dataset root
    docs: int
    bytes: int
    skips: dict
    seconds: float
    worker: str = ""  # Ray node id that processed the shard ("local" without Ray)


@dataclass
class PatchSetRecord:
    params: dict
    shards: dict[str, dict] = field(default_factory=dict)  # unit key -> {output, docs, bytes, patches}
    calibration: dict | None = None
    created: float = field(default_factory=time.time)

    def totals(self) -> dict:
        docs = sum(s["docs"] for s in self.shards.values())
        nbytes = sum(s["bytes"] for s in self.shards.values())
        patches = sum(s["patches"] for s in self.shards.values())
        return {"docs": docs, "bytes": nbytes, "patches": patches,
                "avg_patch_size": nbytes / patches if patches else 0.0}


def _patch_set_from_dict(v: dict) -> PatchSetRecord:
    return PatchSetRecord(**{f: v[f] for f in ("params", "shards", "calibration", "created") if f in v})


@dataclass
class Manifest:
    root: str
    entropy_model: dict | None = None  # {"id": content hash, "url": where it was loaded from}
    reader: dict | None = None
    shards: dict[str, ShardRecord] = field(default_factory=dict)  # unit key -> record
    patch_sets: dict[str, PatchSetRecord] = field(default_factory=dict)
    default_patch_set: str | None = None
    version: int = MANIFEST_VERSION
    clock: dict[str, float] = field(default_factory=dict)  # dataset field -> time of the record that set it
    # Records merged into this view and not yet compacted (their URLs), and when this object last compacted.
    _records: set[str] = field(default_factory=set, repr=False)
    # Entries known to be in storage (loaded, or committed by this view): ("s", unit) and ("p", patch set, unit).
    # Only the others (set by hand) are carried into a fresh view, so an entry another job has since dropped or
    # re-committed is never written back from this view's stale copy.
    _stored: set[tuple] = field(default_factory=set, repr=False)
    _since_compaction: int = field(default=0, repr=False)
    _compacted_at: float = field(default_factory=time.monotonic, repr=False)

    @property
    def url(self) -> str:
        return join(self.root, MANIFEST_NAME)

    @property
    def commits_url(self) -> str:
        return join(self.root, COMMITS_DIR)

    @property
    def model_id(self) -> str | None:
        return (self.entropy_model or {}).get("id")

    # ------------------------------------------------------------------ loading and merging
    @classmethod
    def load(cls, root: str) -> Manifest:
        """manifest.json plus every uncompacted commit record, merged in time order."""
        for attempt in range(30):
            manifest = cls._load_once(root)
            if manifest is not None:
                return manifest
            time.sleep(0.02 * attempt)
        raise RuntimeError(f"{root}: commit records kept vanishing while loading (compaction storm?)")

    @classmethod
    def _load_once(cls, root: str) -> Manifest | None:
        # LIST first, then manifest.json: a record deleted by a compaction in between is then already in the
        # manifest we read; a record that vanishes before we GET it means exactly that race, so load again.
        # Only finished records: a local writer's "<name>.json.tmp-<uuid>" is not one yet.
        listed = sorted(u for u in list_detailed(join(root, COMMITS_DIR)) if u.endswith(".json"))
        manifest = cls(root=root)
        try:
            data = json.loads(read_bytes(join(root, MANIFEST_NAME)))
        except FileNotFoundError:
            data = None
        if data is not None:
            if data.get("version") != MANIFEST_VERSION:
                raise ValueError(f"{manifest.url}: manifest version {data.get('version')} is not {MANIFEST_VERSION}")
            manifest._set_from_dict(data)
        bodies = read_many(listed)
        if len(bodies) != len(listed):
            return None
        records = []
        for url in listed:
            try:
                records.append((json.loads(bodies[url]), url))
            except ValueError:
                log.warning("ignoring unreadable commit record %s", url)
        for record, url in sorted(records, key=lambda r: (r[0].get("t", 0.0), r[1])):
            manifest._apply(record)
            manifest._records.add(url)
        return manifest

    def _set_from_dict(self, data: dict) -> None:
        self.entropy_model = data.get("entropy_model")
        self.reader = data.get("reader")
        self.shards = {k: ShardRecord(**v) for k, v in data.get("shards", {}).items()}
        self.patch_sets = {k: _patch_set_from_dict(v) for k, v in data.get("patch_sets", {}).items()}
        self.default_patch_set = data.get("default_patch_set")
        self.clock = dict(data.get("clock", {}))
        self._mark_all_stored()

    def _mark_all_stored(self) -> None:
        self._stored = {("s", k) for k in self.shards}
        self._stored |= {("p", name, unit) for name, ps in self.patch_sets.items() for unit in ps.shards}

    def _apply(self, record: dict) -> None:
        """Fold one commit record into this view (records are applied in time order)."""
        kind, t = record.get("kind"), float(record.get("t", 0.0))
        if kind == "dataset":
            model = record.get("entropy_model")
            if (model is not None and self.model_id is not None and model.get("id") != self.model_id
                    and t >= self.clock.get("entropy_model", 0.0)):
                self.shards.clear()  # a new entropy model invalidates every earlier shard and patch set
                self.patch_sets.clear()
            for name in DATASET_FIELDS:
                if record.get(name) is not None and t >= self.clock.get(name, 0.0):
                    setattr(self, name, record[name])
                    self.clock[name] = t
            return
        if record.get("model_id") != self.model_id:
            return  # made with another entropy model than the dataset's current one
        if kind == "patch_set":
            existing = self.patch_sets.get(record["key"])
            if existing is None:
                self.patch_sets[record["key"]] = PatchSetRecord(params=record["params"],
                                                                calibration=record.get("calibration"),
                                                                created=record.get("created", t))
            else:
                existing.params = record["params"]
                if record.get("calibration") is not None:
                    existing.calibration = record["calibration"]
        elif kind == "unit":
            self.shards[record["key"]] = ShardRecord(**record["shard"])
            self._stored.add(("s", record["key"]))
            for patch_set in self.patch_sets.values():  # made from the unit's earlier entropies: stale now
                patch_set.shards.pop(record["key"], None)
            if record.get("patch_set") is not None:
                self._patch_set(record["patch_set"], record.get("params")).shards[record["key"]] = record["patch"]
                self._stored.add(("p", record["patch_set"], record["key"]))
        elif kind == "patch":
            self._patch_set(record["patch_set"], record.get("params")).shards[record["key"]] = record["patch"]
            self._stored.add(("p", record["patch_set"], record["key"]))
        elif kind == "drop":
            for key in record["keys"]:
                self.shards.pop(key, None)
                for patch_set in self.patch_sets.values():
                    patch_set.shards.pop(key, None)

    def _patch_set(self, key: str, params: dict | None) -> PatchSetRecord:
        if key not in self.patch_sets:
            self.patch_sets[key] = PatchSetRecord(params=params or {})
        return self.patch_sets[key]

    # ------------------------------------------------------------------ committing (one small object each)
    def _commit(self, kind: str, name: str, record: dict) -> None:
        record = {"kind": kind, "t": time.time(), **record}
        if kind != "dataset":
            record.setdefault("model_id", self.model_id)
        url = join(self.root, commit_record_path(kind, name, uuid.uuid4().hex[:12]))
        write_bytes_atomic(url, json.dumps(record, sort_keys=True).encode())
        self._apply(record)
        self._records.add(url)
        self._since_compaction += 1

    def commit_dataset(self, **fields) -> bool:
        """Set dataset-level fields (entropy_model, reader, default_patch_set); writes only if one changes."""
        changed = {k: v for k, v in fields.items() if k in DATASET_FIELDS and v is not None and getattr(self, k) != v}
        if not changed:
            return False
        self._commit("dataset", "dataset", changed)
        return True

    def commit_patch_set(self, key: str, params: dict, calibration: dict | None = None) -> None:
        """Define (or re-calibrate) a patch set; its entries come from commit_unit/commit_patch."""
        existing = self.patch_sets.get(key)
        if existing is not None and existing.params == params and (calibration is None
                                                                   or existing.calibration == calibration):
            return
        self._commit("patch_set", key, {"key": key, "params": params, "calibration": calibration,
                                        "created": time.time()})

    def commit_unit(self, shard: ShardRecord | dict, patch_set: str | None = None, patch: dict | None = None,
                    params: dict | None = None) -> None:
        """One finished work unit: its entropy shard and (optionally) its entry in one patch set, together."""
        shard = asdict(shard) if isinstance(shard, ShardRecord) else dict(shard)
        self._commit("unit", shard["input_url"], {"key": shard["input_url"], "shard": shard,
                                                  "patch_set": patch_set, "patch": patch, "params": params})

    def commit_patch(self, patch_set: str, key: str, patch: dict, params: dict | None = None) -> None:
        """One unit's entry in a patch set (re-patching from stored entropies)."""
        self._commit("patch", f"{patch_set}/{key}", {"patch_set": patch_set, "key": key, "patch": patch,
                                                     "params": params})

    def commit_drop(self, keys: list[str]) -> None:
        """Forget units (e.g. an input changed and its units were re-planned)."""
        if keys:
            self._commit("drop", ",".join(sorted(keys)), {"keys": sorted(keys)})

    # ------------------------------------------------------------------ compaction
    def maybe_compact(self, every: int = 1000, seconds: float = 300.0) -> bool:
        """Compact once ``max(every, units/10)`` records or ``seconds`` have piled up since the last compaction.

        Scaling the count with the dataset keeps the amortized cost per commit flat (a compaction rewrites
        O(units) bytes once per O(units) commits) and bounds the records a load has to read to ~10%."""
        if not self._since_compaction:
            return False
        if (self._since_compaction >= max(every, len(self.shards) // 10)
                or time.monotonic() - self._compacted_at >= seconds):
            return self.compact()
        return False

    def compact(self, wait: float = 0.0, only_if_pending: bool = False) -> bool:
        """Fold every stored record into manifest.json under the compaction lease; False if another holds it.

        The stored manifest and records are re-read and unioned with this view (nothing another job committed
        is lost), then the folded records are deleted. This view becomes the merged one. ``only_if_pending``:
        do nothing when this view merged no record and committed nothing (a no-op re-run rewrites nothing)."""
        if only_if_pending and not self._records and not self._since_compaction:
            return False
        lease = _Lease(self.root)
        deadline = time.monotonic() + wait
        while not lease.acquire():
            if time.monotonic() >= deadline:
                log.info("compaction skipped: %s holds the lease (records stay; readers merge them)",
                         lease.holder or "another job")
                return False
            time.sleep(0.2)
        try:
            fresh = Manifest.load(self.root)
            fresh._overlay(self)
            body = json.dumps(fresh.to_dict(), sort_keys=True).encode()
            lease.renew()  # fence: still ours for LEASE_SECONDS, so no other compaction writes meanwhile
            write_bytes_atomic(self.url, body)
            fresh._mark_all_stored()
            lease.renew()
            delete_many(sorted(fresh._records))
        except LeaseLost as exc:
            log.warning("compaction abandoned: %s (records stay; readers merge them)", exc)
            return False
        finally:
            lease.release()
        self._adopt(fresh)
        return True

    def save(self) -> None:
        """Compact now (waiting for a running compaction to finish): manifest.json holds everything committed."""
        self.compact(wait=LEASE_SECONDS + 5)

    def refresh(self) -> None:
        """Re-read what is stored (others' commits included); this view's own commits are all stored."""
        fresh = Manifest.load(self.root)
        fresh._overlay(self)
        self._adopt(fresh, keep_counters=True)

    def _overlay(self, mine: Manifest) -> None:
        """Union ``mine`` (in-memory state, possibly set by hand) into this freshly loaded view."""
        for name in DATASET_FIELDS:
            value = getattr(mine, name)
            if value is not None and (getattr(self, name) is None
                                      or mine.clock.get(name, 0.0) > self.clock.get(name, 0.0)):
                if name == "entropy_model" and self.model_id and value.get("id") != self.model_id:
                    continue
                setattr(self, name, value)
                self.clock[name] = max(mine.clock.get(name, 0.0), self.clock.get(name, 0.0))
        if mine.model_id is not None and mine.model_id != self.model_id:
            return  # our entries belong to a model the dataset has moved away from
        for key, record in mine.shards.items():
            if ("s", key) not in mine._stored:
                self.shards.setdefault(key, record)
        for key, patch_set in mine.patch_sets.items():
            target = self.patch_sets.setdefault(key, PatchSetRecord(params=patch_set.params,
                                                                    calibration=patch_set.calibration,
                                                                    created=patch_set.created))
            if target.calibration is None:
                target.calibration = patch_set.calibration
            for unit, entry in patch_set.shards.items():
                if ("p", key, unit) not in mine._stored:
                    target.shards.setdefault(unit, entry)

    def _adopt(self, other: Manifest, keep_counters: bool = False) -> None:
        for name in ("entropy_model", "reader", "shards", "patch_sets", "default_patch_set", "clock", "_stored"):
            setattr(self, name, getattr(other, name))
        if keep_counters:
            self._records = other._records
        else:
            self._records = set()
            self._since_compaction = 0
            self._compacted_at = time.monotonic()

    # ------------------------------------------------------------------ views
    def to_dict(self) -> dict:
        return {
            "version": self.version,
            "entropy_model": self.entropy_model,
            "reader": self.reader,
            "shards": {k: asdict(v) for k, v in sorted(self.shards.items())},
            "patch_sets": {
                k: asdict(v) | {"totals": v.totals()} for k, v in sorted(self.patch_sets.items())
            },
            "default_patch_set": self.default_patch_set,
            "clock": self.clock,
            "totals": self.totals(),
        }

    def totals(self) -> dict:
        skipped: dict[str, int] = {}
        for record in self.shards.values():
            for reason, count in record.skips.get("counts", {}).items():
                skipped[reason] = skipped.get(reason, 0) + count
        return {
            "shards": len(self.shards),
            "docs": sum(r.docs for r in self.shards.values()),
            "bytes": sum(r.bytes for r in self.shards.values()),
            "skipped": skipped,
        }


class LeaseLost(RuntimeError):
    """The compaction lease could not be renewed (another job took it over): stop before writing anything."""


class _Lease:
    """Compaction lease: one object holding owner + expiry, changed only by conditional writes.

    Created with ``If-None-Match: *`` (local: under an flock), so two jobs never both create it; an expired one
    (its holder died) is taken over, and a held one renewed, with ``If-Match`` on the version read, so of two
    jobs racing for it exactly one wins. While held, a background thread renews it every third of its life, so
    a compaction that outlives ``LEASE_SECONDS`` keeps it; ``renew()`` right before each write is the fence: a
    holder that lost the lease (paused past its expiry) stops there instead of overwriting the new holder's
    manifest. Expiry is wall-clock time: clocks of the jobs' machines must agree to well within the lease."""

    def __init__(self, root: str) -> None:
        self.url = join(root, LEASE_PATH)
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.holder: str | None = None
        self.etag: str | None = None  # the version we wrote last; None when not held
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._renewer: threading.Thread | None = None

    def _body(self) -> bytes:
        return json.dumps({"owner": self.owner, "expires": time.time() + LEASE_SECONDS}).encode()

    def _read(self) -> tuple[dict, str] | None:
        current = read_versioned(self.url)
        if current is None:
            return None
        try:
            return json.loads(current.data), current.etag
        except ValueError:
            return {"owner": "?", "expires": 0.0}, current.etag  # unreadable: treat as expired

    def _put(self, if_match: str | None) -> bool:
        etag = put_conditional(self.url, self._body(), if_match)
        if etag is None:  # lost the race, or a retried request of ours already landed: look
            current = self._read()
            if current is None or current[0].get("owner") != self.owner:
                return False
            etag = current[1]
        self.etag = etag
        return True

    def acquire(self) -> bool:
        """Take the lease if it is free or expired; False (``holder`` set) if another job holds it."""
        with self._lock:
            for _ in range(3):  # a missing lease may be created and released by others between our calls
                if self._put(None):
                    break
                current = self._read()
                if current is None:
                    continue
                body, etag = current
                self.holder = body.get("owner")
                if body.get("expires", 0.0) > time.time():
                    return False
                log.warning("taking over the expired compaction lease of %s", self.holder)
                if self._put(etag):
                    break
                return False
            else:
                return False
        self._stop.clear()
        self._renewer = threading.Thread(target=self._renew_loop, name="lease-renewer", daemon=True)
        self._renewer.start()
        return True

    def renew(self) -> None:
        """Extend the lease by LEASE_SECONDS from now; LeaseLost if another job holds it now."""
        with self._lock:
            if self.etag is None or not self._put(self.etag):
                self.etag = None
                raise LeaseLost(f"{self.url}: the compaction lease was taken over")

    def _renew_loop(self) -> None:
        while not self._stop.wait(LEASE_SECONDS / 3):
            try:
                self.renew()
            except LeaseLost:
                return
            except Exception as exc:  # a storage hiccup: the next turn (or the fence before a write) retries
                log.warning("renewing the compaction lease failed: %s", exc)

    def release(self) -> None:
        self._stop.set()
        if self._renewer is not None:
            self._renewer.join()
        with self._lock:
            if self.etag is not None:
                delete_conditional(self.url, self.etag)
                self.etag = None
