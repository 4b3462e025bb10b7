"""SemanticCache: a stored value for a near-duplicate text (cosine, then a verifier), shared via Redis."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import sys
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import NamedTuple

import numpy as np
from redis.asyncio import Redis

from xz_serve.cache.guard import cache_guard, cache_stats
from xz_serve.cache.spec import CacheSpec
from xz_serve.cache.stats import CacheStats
from xz_serve.cache.verify import Digest, PairVerifier, digest, facts
from xz_serve.kernel.redis import RedisGuard

log = logging.getLogger(__name__)

_CANDIDATES = 8  # neighbours inspected for the margin rule; beyond 8 equal values, agreement is assumed
# Memory accounting (approximate, measured with tracemalloc in tests/unit/cache/test_semantic.py):
_MIN_ROWS = 8  # rows a namespace's arrays start with; a few entries do not pay for a full matrix
_PARTITION_BYTES = 2048  # a namespace's fixed cost: the partition, its lists and dict, array headers
_ENTRY_BYTES = 400  # per entry besides its row, value, key and digest: list, dict and LRU slots


class SemanticHit(NamedTuple):
    """The value served for a query, how similar its stored embedding was (cosine), and what matched."""

    value: bytes
    similarity: float
    key: str | None = None  # the stored entry's key


def unit_rows(vectors: np.ndarray) -> np.ndarray:
    """Rows scaled to length 1 (float32), so a dot product is the cosine; zero rows stay zero."""
    rows = np.atleast_2d(np.asarray(vectors, dtype=np.float32))
    norms = np.linalg.norm(rows, axis=1, keepdims=True)
    unit: np.ndarray = np.divide(rows, norms, out=np.zeros_like(rows), where=norms > 0)
    return unit


def choose(
    sims: np.ndarray,
    values: Sequence[bytes],
    threshold: float,
    margin: float,
    accept: Callable[[int], bool] | None = None,
    distinct: Callable[[int], bool] | None = None,
) -> tuple[int, float] | None:
    """The index served for one query's similarities, or None; the whole decision rule in one place.

    The best entry must reach ``threshold`` and, when ``margin`` > 0, beat the best entry holding a
    *different* value by ``margin``: a query that sits between two cached questions with different
    answers is a miss, while two copies of the same answer never veto each other.

    With a verifier, the best entry must also pass ``accept(index)``; a refused best entry is a
    miss, never a reason to serve a farther one (falling back raised false hits for uncached FAQs
    from 0.7% to 2.3%, bench/results/semantic_threshold.md). An entry ``distinct(index)`` marks as a different
    question from the query (a hard veto: "... in 2016" against a query about 2017) does not count
    against the margin, so two stored look-alikes with different answers stay servable.
    """
    if sims.size == 0:
        return None
    best = int(np.argmax(sims))
    score = float(sims[best])
    if score < threshold:
        return None
    if margin > 0 and sims.size > 1:
        k = min(_CANDIDATES, sims.size)
        top = np.argpartition(-sims, k - 1)[:k]
        for i in (int(j) for j in top[np.argsort(-sims[top])]):
            if score - float(sims[i]) >= margin:
                break
            if values[i] != values[best] and not (distinct is not None and distinct(i)):
                return None
    if accept is not None and not accept(best):
        return None
    return best, score


class _Partition:
    """One namespace's entries on this replica: rows ``0..size-1`` of its arrays, at most ``capacity``.

    An entry keeps its vector, value, key and the ``Digest`` the verifier reads, not its text.
    Removing one moves the last row into its place, so the rows stay dense for the matrix product.
    """

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.matrix = np.zeros((0, 0), dtype=np.float32)
        self.expires = np.zeros(0, dtype=np.float64)
        self.used = np.zeros(0, dtype=np.int64)  # when each entry was last stored or served
        self.values: list[bytes] = []
        self.digests: list[Digest | None] = []
        self.keys: list[str] = []
        self.slots: dict[str, int] = {}
        self.size = 0
        self.entry_bytes = 0  # the entries' values, keys, digests and bookkeeping
        self.last_id = b"0-0"  # newest stream entry seen
        self.next_refresh = 0.0
        self.refreshing = False

    @property
    def nbytes(self) -> int:
        """What this namespace holds in memory, allocated rows included (approximate, in bytes)."""
        rows, dims = self.matrix.shape
        return _PARTITION_BYTES + rows * (dims * 4 + 16) + self.entry_bytes

    def add(
        self,
        key: str,
        vector: np.ndarray,
        value: bytes,
        expires: float,
        digest: Digest | None,
        used: int,
        now: float,
    ) -> str | None:
        """Insert or replace ``key``; returns the key evicted for room (an expired one first, else
        the least recently used), or None."""
        if self.matrix.shape[1] != vector.shape[0]:
            if self.size:
                have, want = vector.shape[0], self.matrix.shape[1]
                raise ValueError(f"embedding has {have} dims, namespace has {want}")
            self.matrix = np.zeros((0, vector.shape[0]), dtype=np.float32)
        evicted = None
        slot = self.slots.get(key)
        if slot is None:
            if self.size >= self.capacity:
                stale = self.expires[: self.size] <= now
                evicted = self.keys[int(np.argmin(np.where(stale, -1, self.used[: self.size])))]
                self.remove(evicted)
            slot = self.size
            self._resize(slot + 1)
            self.values.append(value)
            self.digests.append(digest)
            self.keys.append(key)
            self.slots[key] = slot
            self.size += 1
        else:
            self.entry_bytes -= _entry_bytes(key, self.values[slot], self.digests[slot])
            self.values[slot] = value
            self.digests[slot] = digest
        self.entry_bytes += _entry_bytes(key, value, digest)
        self.matrix[slot] = vector
        self.expires[slot] = expires
        self.used[slot] = used
        return evicted

    def remove(self, key: str) -> None:
        slot = self.slots.pop(key)
        self.entry_bytes -= _entry_bytes(key, self.values[slot], self.digests[slot])
        last = self.size - 1
        if slot != last:
            for array in (self.matrix, self.expires, self.used):
                array[slot] = array[last]
            self.values[slot], self.digests[slot] = self.values[last], self.digests[last]
            self.keys[slot] = self.keys[last]
            self.slots[self.keys[slot]] = slot
        self.values.pop()
        self.digests.pop()
        self.keys.pop()
        self.size = last
        self._resize(self.size)

    def expired(self, now: float) -> list[str]:
        return [self.keys[int(i)] for i in np.flatnonzero(self.expires[: self.size] <= now)]

    def _resize(self, rows: int) -> None:
        # Double up to capacity as entries arrive, halve below a quarter full, free when empty: an
        # emptied namespace must give its rows back, or evicting entries would not free memory.
        alloc = self.matrix.shape[0]
        if rows > alloc:
            new = min(self.capacity, max(rows, 2 * alloc, _MIN_ROWS))
        elif rows == 0:
            new = 0
        elif alloc > _MIN_ROWS and rows <= alloc // 4:
            new = max(_MIN_ROWS, 2 * rows)
        else:
            return
        n = self.size
        matrix = np.zeros((new, self.matrix.shape[1]), dtype=np.float32)
        matrix[:n] = self.matrix[:n]
        expires = np.zeros(new, dtype=np.float64)
        expires[:n] = self.expires[:n]
        used = np.zeros(new, dtype=np.int64)
        used[:n] = self.used[:n]
        self.matrix, self.expires, self.used = matrix, expires, used


def _entry_bytes(key: str, value: bytes, digest: Digest | None) -> int:
    return _ENTRY_BYTES + sys.getsizeof(key) + sys.getsizeof(value) + (digest.nbytes if digest else 0)


class SemanticCache:
    """Nearest stored entry above a cosine threshold that the verifier accepts, per namespace, everywhere.

    Redis 7 has no vector search, so Redis only stores and ships entries: each namespace is one
    stream (``XADD ... MAXLEN = max_entries``, so the oldest go first and memory is bounded). Every
    replica keeps the namespace as a float32 matrix and pulls new stream entries at most every
    ``refresh_ms`` when it is queried, which makes another replica's write visible in about that
    long. A search is one matrix-vector product (10k x 384 is well under a millisecond).
    Redis failures leave the local copy serving and stores local-only; nothing raises.

    A replica holds at most ``max_entries`` per namespace and ``max_bytes`` in all: namespaces are
    per tenant and rule, so their number grows with the tenants, and past the budget the least
    recently used entries go, whichever namespace holds them (``nbytes``: what is held now).

    With a ``verifier``, a candidate is served only if the query's text and the entry's text are
    both known and the verifier accepts the pair (bench/semantic_threshold.py measures why);
    entries stored without text are then never served. Without one, cosine alone decides.
    """

    def __init__(
        self,
        guard: RedisGuard,
        *,
        threshold: float,
        margin: float = 0.0,
        max_entries: int = 10_000,
        max_bytes: int = 64 * 2**20,
        ttl_s: int = 86_400,
        refresh_ms: float = 250.0,
        page: int = 500,
        clock: Callable[[], float] = time.time,
        verifier: PairVerifier | None = None,
    ) -> None:
        self.guard = guard
        self.stats: CacheStats = cache_stats(guard)
        self.threshold = threshold
        self.margin = margin
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.ttl_s = ttl_s
        self.refresh_s = refresh_ms / 1000
        self.page = page
        self._clock = clock
        self.verifier = verifier
        self.nbytes = 0
        self._partitions: OrderedDict[str, _Partition] = OrderedDict()  # least recently used first
        self._lru: OrderedDict[tuple[str, str], None] = OrderedDict()  # (namespace, key), across all
        self._uses = 0

    @classmethod
    def from_spec(cls, spec: CacheSpec, guard: RedisGuard | None = None) -> SemanticCache:
        """Cache configured by ``spec``; pass ``guard`` to share one Redis client and outage state."""
        return cls(
            guard or cache_guard(spec),
            threshold=spec.semantic_threshold,
            margin=spec.semantic_margin,
            max_entries=spec.semantic_max_entries,
            max_bytes=spec.semantic_max_bytes,
            ttl_s=spec.semantic_ttl_s,
            refresh_ms=spec.semantic_refresh_ms,
            verifier=PairVerifier(spec.semantic_verify_min_probability) if spec.semantic_verify else None,
        )

    @property
    def entries(self) -> int:
        """Entries held on this replica, in all namespaces."""
        return len(self._lru)

    @staticmethod
    def stream_key(namespace: str) -> str:
        """Redis key of a namespace's entries (build namespaces with ``keys.semantic_namespace``)."""
        return f"{namespace}:entries"

    def _partition(self, namespace: str) -> _Partition:
        part = self._partitions.get(namespace)
        if part is None:
            part = self._partitions[namespace] = _Partition(self.max_entries)
            self._account(part.nbytes)
            self._fit(keep=namespace)
        else:
            self._partitions.move_to_end(namespace)
        return part

    def _account(self, change: int) -> None:
        self.nbytes += change
        self.stats.semantic_bytes += change

    def _use(self, namespace: str, part: _Partition, slot: int) -> None:
        self._uses += 1
        part.used[slot] = self._uses
        self._lru.move_to_end((namespace, part.keys[slot]))

    def _add(
        self,
        namespace: str,
        part: _Partition,
        key: str,
        vector: np.ndarray,
        value: bytes,
        expires: float,
        digest: Digest | None,
    ) -> None:
        before = part.nbytes
        self._uses += 1
        evicted = part.add(key, vector, value, expires, digest, self._uses, self._clock())
        if evicted is not None:
            del self._lru[(namespace, evicted)]
            self.stats.semantic_evictions += 1
        self._lru[(namespace, key)] = None
        self._lru.move_to_end((namespace, key))
        self._account(part.nbytes - before)
        self._fit(keep=namespace)

    def _remove(self, namespace: str, part: _Partition, key: str) -> None:
        before = part.nbytes
        part.remove(key)
        del self._lru[(namespace, key)]
        self._account(part.nbytes - before)

    def _fit(self, keep: str) -> None:
        """Evict the least recently used entries, in any namespace, until ``max_bytes`` holds; with
        none left, forget idle empty namespaces but ``keep`` (the one in use): their stream is read
        again if they are asked."""
        while self.nbytes > self.max_bytes:
            if self._lru:
                namespace, key = next(iter(self._lru))
                self._remove(namespace, self._partitions[namespace], key)
                self.stats.semantic_budget_evictions += 1
                continue
            idle = next((ns for ns, p in self._partitions.items() if ns != keep and not p.refreshing), None)
            if idle is None:
                return
            self._account(-self._partitions.pop(idle).nbytes)

    async def lookup(
        self, namespace: str, embedding: np.ndarray, *, text: str | None = None
    ) -> SemanticHit | None:
        """The nearest live entry passing the threshold, margin and verifier, else None.

        Args:
            namespace: as given to ``store``.
            embedding: the query's embedding ([dim]), the one the encoder already computed.
            text: the query's text; with a verifier configured, no text means no hit.
        """
        return (await self.lookup_many(namespace, embedding, texts=None if text is None else [text]))[0]

    async def lookup_many(
        self, namespace: str, embeddings: np.ndarray, *, texts: Sequence[str | None] | None = None
    ) -> list[SemanticHit | None]:
        """``lookup`` for each row of ``embeddings`` ([n, dim] or [dim]) with one matrix product."""
        queries = unit_rows(embeddings)
        if texts is not None and len(texts) != len(queries):
            raise ValueError(f"{len(texts)} texts for {len(queries)} embeddings")
        await self.refresh(namespace)
        part = self._partition(namespace)
        if part.size == 0:
            self.stats.semantic_misses += len(queries)
            return [None] * len(queries)
        if queries.shape[1] != part.matrix.shape[1]:
            raise ValueError(f"query has {queries.shape[1]} dims, namespace has {part.matrix.shape[1]}")
        sims = queries @ part.matrix[: part.size].T
        sims[:, part.expires[: part.size] <= self._clock()] = -np.inf
        hits: list[SemanticHit | None] = []
        for n, row in enumerate(sims):
            query_text = texts[n] if texts is not None else None
            accept, distinct = (None, None) if self.verifier is None else self._judges(part, query_text, row)
            picked = choose(row, part.values, self.threshold, self.margin, accept, distinct)
            if picked is None:
                self.stats.semantic_misses += 1
                if (self.margin > 0 or accept is not None) and row.max() >= self.threshold:
                    self.stats.semantic_rejected += 1
                hits.append(None)
            else:
                i = picked[0]
                self.stats.semantic_hits += 1
                self._use(namespace, part, i)
                hits.append(SemanticHit(part.values[i], picked[1], part.keys[i]))
        return hits

    def _judges(
        self, part: _Partition, query: str | None, sims: np.ndarray
    ) -> tuple[Callable[[int], bool], Callable[[int], bool]]:
        """The verifier as ``choose`` asks it: may entry i answer ``query``; is it surely another question?"""
        verifier = self.verifier
        assert verifier is not None
        asked = None if query is None else facts(query)  # once per query, not once per candidate

        def accept(i: int) -> bool:
            entry = part.digests[i]
            if asked is None or entry is None:  # unverifiable: a wrong answer costs more than a miss
                return False
            return verifier.accepts(asked, entry, float(sims[i]))

        def distinct(i: int) -> bool:
            entry = part.digests[i]
            return asked is not None and entry is not None and verifier.distinct(asked, entry)

        return accept, distinct

    async def store(
        self,
        namespace: str,
        embedding: np.ndarray,
        value: bytes,
        ttl_s: int | None = None,
        key: str | None = None,
        *,
        text: str | None = None,
    ) -> None:
        """Add an entry here at once and, via one XADD, for every replica; never raises for Redis.

        Args:
            namespace: from ``keys.semantic_namespace`` (model and tenant are part of it).
            embedding: the query text's embedding ([dim]).
            value: what a later near-duplicate query gets back.
            ttl_s: lifetime, at most the cache's ``ttl_s``.
            key: identity of the entry (e.g. the exact ``cache_key``); a second store with the same
                key replaces the first instead of occupying a second row. Default: hash of value+vector.
            text: the question's text, stored with the entry in Redis so that every replica can run
                the verifier on it (each keeps only its ``Digest``); without it, the entry is
                served only when no verifier is set.
        """
        vector = unit_rows(embedding)[0]
        ttl = min(ttl_s or self.ttl_s, self.ttl_s)
        expires = self._clock() + ttl
        if key is None:
            key = hashlib.sha256(value + vector.tobytes()).hexdigest()
        part = self._partition(namespace)
        self._add(namespace, part, key, vector, value, expires, None if text is None else digest(text))
        stream = self.stream_key(namespace)
        fields: dict[str | bytes, bytes | str | float] = {
            "k": key, "e": vector.tobytes(), "v": value, "x": repr(expires)
        }  # fmt: skip
        if text is not None:
            fields["t"] = text.encode()
        cap, min_id = self.max_entries, int((self._clock() - self.ttl_s) * 1000)

        async def xadd(client: Redis) -> bool:
            pipe = client.pipeline(transaction=False)
            pipe.xadd(stream, fields, maxlen=cap, approximate=False)  # type: ignore[arg-type]
            pipe.xtrim(stream, minid=str(min_id), approximate=True)  # all older entries have expired
            pipe.expire(stream, self.ttl_s)  # an abandoned namespace (old model) disappears whole
            await pipe.execute()
            return True

        await self.guard.call(xadd, False, "semantic store")

    async def refresh(self, namespace: str, force: bool = False) -> None:
        """Pull stream entries newer than the last one seen, if ``refresh_ms`` has passed (or ``force``).

        One refresh per namespace runs at a time; concurrent lookups use the entries at hand.
        """
        part = self._partition(namespace)
        now = time.monotonic()
        if part.refreshing or (now < part.next_refresh and not force):
            return
        part.refreshing = True
        try:
            for key in part.expired(self._clock()):  # never served again: give their memory back
                self._remove(namespace, part, key)
            stream = self.stream_key(namespace)
            while True:
                start = b"(" + part.last_id

                async def page(client: Redis, start: bytes = start) -> list[tuple[bytes, dict[bytes, bytes]]]:
                    entries = await client.xrange(stream, min=start, max="+", count=self.page)
                    return entries  # type: ignore[return-value]  # bytes: decode_responses is off

                entries = await self.guard.call(page, None, "semantic refresh")
                if not entries:
                    break
                self._ingest(namespace, part, entries)
                if len(entries) < self.page:
                    break
                await asyncio.sleep(0)  # a big first load must not starve the event loop
        finally:
            part.refreshing = False
            part.next_refresh = time.monotonic() + self.refresh_s

    def _ingest(
        self, namespace: str, part: _Partition, entries: list[tuple[bytes, dict[bytes, bytes]]]
    ) -> None:
        now = self._clock()
        for entry_id, fields in entries:
            part.last_id = entry_id
            try:
                expires = float(fields[b"x"])
                vector = np.frombuffer(fields[b"e"], dtype=np.float32)
                if expires <= now:
                    continue
                key, value = fields[b"k"].decode(), fields[b"v"]
                said = digest(fields[b"t"].decode()) if b"t" in fields else None
                self._add(namespace, part, key, vector, value, expires, said)
            except (KeyError, ValueError) as exc:  # foreign or corrupt (bad UTF-8 too): skipped, not fatal
                log.debug("skipping semantic entry %r: %s", entry_id, exc)

    async def warm(self, namespace: str) -> int:
        """Load a namespace now (replica start), so the first lookups do not pay for it; returns its size."""
        await self.refresh(namespace, force=True)
        return self._partition(namespace).size
