"""ClassifierRegistry: the heads one replica holds, kept in step with the store within ``refresh_s``.

Per tenant the registry keeps the store's epoch, the id -> version and name -> id maps, and checks
the epoch (one GET) when a request for that tenant finds it older than ``refresh_s``; a changed
epoch re-reads the maps and drops every head whose version moved on or that was deleted. So a
request that arrives ``refresh_s`` after a write sees it on every replica, no background task runs,
and an idle tenant costs the store nothing. Concurrent requests share one check per tenant.

A name or id the view does not know is looked up at once (one epoch read, shared by concurrent
requests), so a classifier created on another replica is usable on this one right away.

Heads are loaded on first use and kept in one LRU over all tenants, bounded by
``registry_max_bytes``. While the store is unreachable, the registry keeps serving the maps and
heads it already holds (a classifier it never loaded answers 503), and tries again after
``refresh_s``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

from xz_serve.classifiers.errors import ClassifierNotFoundError, ClassifierStoreError
from xz_serve.classifiers.store import ClassifierStore, Loaded

log = logging.getLogger(__name__)


@dataclass
class _TenantView:
    """What this replica last read of one tenant's classifiers."""

    epoch: int
    versions: dict[str, int]
    names: dict[str, str]
    checked: float  # clock time the last check began
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


class ClassifierRegistry:
    """Per-replica, per-tenant view of the store's classifiers and an LRU of their heads."""

    def __init__(
        self,
        store: ClassifierStore,
        refresh_s: float,
        max_bytes: int,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.store = store
        self.refresh_s = refresh_s
        self.max_bytes = max_bytes
        self._clock = clock
        self._views: dict[str, _TenantView] = {}
        self._heads: OrderedDict[tuple[str, str], Loaded] = OrderedDict()
        self.bytes = 0

    @property
    def heads(self) -> int:
        """Heads held in memory now."""
        return len(self._heads)

    async def get(self, tenant: str, ref: str) -> Loaded:
        """The current version of the tenant's classifier named by id or name.

        Raises:
            ClassifierNotFoundError: the tenant has no such classifier (404).
            ClassifierStoreError: the store is unreachable and this replica never held it (503).
        """
        view = await self._fresh(tenant)
        classifier_id = ref if ref in view.versions else view.names.get(ref)
        if classifier_id is None:  # perhaps created a moment ago on another replica: look now
            view = await self._fresh(tenant, force=True)
            classifier_id = ref if ref in view.versions else view.names.get(ref)
        if classifier_id is None:
            raise ClassifierNotFoundError(f"no classifier {ref!r}")
        key = (tenant, classifier_id)
        held = self._heads.get(key)
        if held is not None and held.record.version == view.versions[classifier_id]:
            self._heads.move_to_end(key)
            return held
        try:
            loaded = await self.store.load(tenant, classifier_id)
        except ClassifierStoreError:
            if held is not None:  # an older version is better than none while the store is down
                return held
            raise
        if loaded is None:  # deleted since the view was read
            self._forget(key)
            raise ClassifierNotFoundError(f"no classifier {ref!r}")
        self.put(tenant, loaded)
        return loaded

    def put(self, tenant: str, loaded: Loaded) -> None:
        """Hold ``loaded`` (a write on this replica, or a load); the view learns its version, so the
        writer's replica serves it at once. Other replicas' heads for older versions go at their
        next check."""
        record = loaded.record
        view = self._views.get(tenant)
        if view is None:  # a write before any read here: a partial view, completed at the next check
            view = self._views[tenant] = _TenantView(-1, {}, {}, checked=-float("inf"))
        if view.versions.get(record.id, 0) <= record.version:
            stale = next((n for n, i in view.names.items() if i == record.id and n != record.name), None)
            if stale is not None:
                del view.names[stale]
            view.versions[record.id] = record.version
            view.names[record.name] = record.id
        key = (tenant, record.id)
        self._forget(key)
        self._heads[key] = loaded
        self.bytes += loaded.head.nbytes
        while self.bytes > self.max_bytes and len(self._heads) > 1:
            _, dropped = self._heads.popitem(last=False)
            self.bytes -= dropped.head.nbytes

    def drop(self, tenant: str, classifier_id: str) -> None:
        """Forget a classifier this replica deleted (other replicas forget it at their next check)."""
        self._forget((tenant, classifier_id))
        view = self._views.get(tenant)
        if view is not None:
            view.versions.pop(classifier_id, None)
            for name in [n for n, i in view.names.items() if i == classifier_id]:
                del view.names[name]

    def _forget(self, key: tuple[str, str]) -> None:
        held = self._heads.pop(key, None)
        if held is not None:
            self.bytes -= held.head.nbytes

    async def _fresh(self, tenant: str, *, force: bool = False) -> _TenantView:
        """The tenant's view, checked against the store if older than ``refresh_s`` (``force``: if
        not checked since this call began; concurrent callers share that check)."""
        asked = self._clock()
        view = self._views.get(tenant)
        if view is not None and not force and asked - view.checked < self.refresh_s:
            return view
        if view is None:
            started = self._clock()
            epoch, versions, names = await self.store.state(tenant)  # nothing held: a failure is a 503
            view = self._views.setdefault(tenant, _TenantView(epoch, versions, names, started))
            return view
        async with view.lock:
            started = self._clock()
            if view.checked >= asked or (not force and started - view.checked < self.refresh_s):
                return view  # another request checked while this one waited
            try:
                (epoch,) = await self.store.epochs([tenant])
                if epoch != view.epoch:
                    epoch, view.versions, view.names = await self.store.state(tenant)
                    self._prune(tenant, view)
                view.epoch = epoch
            except ClassifierStoreError as exc:
                log.warning("classifier store unreachable (%s); serving the heads held here", exc)
            view.checked = started
        return view

    def _prune(self, tenant: str, view: _TenantView) -> None:
        """Drop the tenant's heads whose classifier was deleted or has a newer version."""
        for key in [k for k in self._heads if k[0] == tenant]:
            if view.versions.get(key[1]) != self._heads[key].record.version:
                self._forget(key)
