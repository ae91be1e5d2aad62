"""The model manager: verify, load, warm up, lease, evict and hot-swap models under a memory budget.

A caller leases a model for the time it runs it (``with manager.lease("anomaly") as session:``); a
leased model is never evicted or closed. Loading verifies the file's sha256 before the runtime sees
it, checks the tensors against the spec, and warms the session up with one run. When a model does
not fit the budget, least-recently-used unpinned models without leases are unloaded first. A
hot swap loads and warms the new version beside the old one, switches new leases to it, and closes
the old one when its last lease ends, so no request fails.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edgekernel.config.kernel import ModelSpec, TensorSpec
from edgekernel.device.models._files import file_digest
from edgekernel.device.models.runtime import ModelError, ModelFileError, Runtime, Session, TensorInfo

log = logging.getLogger(__name__)

RuntimeFactory = Callable[[str], Runtime]


class BudgetError(ModelError):
    """The model does not fit the memory budget, even after evicting what may be evicted."""


class UnknownModelError(ModelError):
    """No model of that name is configured."""


@dataclass(eq=False)
class _Entry:
    spec: ModelSpec
    session: Session | None = None
    leases: int = 0
    last_used: float = 0.0
    ready: threading.Event = field(default_factory=threading.Event)
    error: ModelError | None = None
    draining: bool = False
    load_ms: float = 0.0
    warmup_ms: float = 0.0

    @property
    def memory_mb(self) -> float:
        return self.spec.memory_mb


@dataclass(frozen=True, slots=True)
class LoadedModelInfo:
    name: str
    version: str
    runtime: str
    device: str
    memory_mb: float
    leases: int
    pinned: bool
    draining: bool
    batch_capable: bool
    load_ms: float
    warmup_ms: float


@dataclass(frozen=True, slots=True)
class ManagerStats:
    budget_mb: float
    used_mb: float
    loaded: tuple[LoadedModelInfo, ...]
    loads: int
    load_failures: int
    evictions: int
    hits: int
    misses: int
    swaps: int


file_sha256 = file_digest


class ModelManager:
    def __init__(
        self,
        specs: Sequence[ModelSpec],
        runtimes: RuntimeFactory,
        *,
        budget_mb: float,
        threads_per_session: int = 1,
        cache_dir: Path | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._specs = {spec.name: spec for spec in specs}
        self._runtimes = runtimes
        self.budget_mb = budget_mb
        self.threads_per_session = threads_per_session
        self.cache_dir = cache_dir
        self._clock = clock
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._active: dict[str, _Entry] = {}
        self._draining: list[_Entry] = []
        self._closing: list[Session] = []  # evicted under the lock, closed after it
        self._counts = {"loads": 0, "load_failures": 0, "evictions": 0, "hits": 0, "misses": 0, "swaps": 0}

    # -- what is configured -----------------------------------------------------------------

    @property
    def specs(self) -> dict[str, ModelSpec]:
        with self._lock:
            return dict(self._specs)

    def spec(self, name: str) -> ModelSpec:
        with self._lock:
            return self._spec(name)

    def _spec(self, name: str) -> ModelSpec:
        try:
            return self._specs[name]
        except KeyError:
            known = ", ".join(sorted(self._specs)) or "none"
            raise UnknownModelError(f"no such model (configured: {known})", model=name) from None

    def free_mb(self) -> float:
        with self._lock:
            return self.budget_mb - self._used_mb()

    def batch_capable(self, name: str) -> bool | None:
        """Whether the loaded version of `name` takes a batch dimension; None when it is not loaded."""
        with self._lock:
            entry = self._active.get(name)
            if entry is None or entry.session is None:
                return None
            return entry.session.batch_capable

    # -- leasing ----------------------------------------------------------------------------

    @contextmanager
    def lease(self, name: str) -> Iterator[Session]:
        """Hold `name` loaded for the duration of the block; load it first if needed."""
        entry = self._acquire(name)
        try:
            assert entry.session is not None
            yield entry.session
        finally:
            self._release(entry)

    def load(self, name: str) -> LoadedModelInfo:
        """Load (or confirm loaded) `name` without holding a lease."""
        with self.lease(name):
            return next(info for info in self.stats().loaded if info.name == name and not info.draining)

    def _acquire(self, name: str) -> _Entry:
        with self._lock:
            spec = self._spec(name)
            entry = self._active.get(name)
            load_here = entry is None
            if entry is None:
                self._counts["misses"] += 1
                self._make_room(spec.memory_mb, for_model=name)
                entry = _Entry(spec)
                self._active[name] = entry
            elif entry.ready.is_set():
                self._counts["hits"] += 1
            entry.leases += 1
            entry.last_used = self._clock()
        self._close_evicted()
        if load_here:
            self._open(entry)
            return entry
        entry.ready.wait()
        if entry.error is not None:
            raise entry.error
        return entry

    def _open(self, entry: _Entry) -> None:
        """Load outside the lock so other models keep serving; publish the result under it."""
        try:
            session, load_ms, warmup_ms = self._load_session(entry.spec)
        except BaseException as err:  # waiters must wake whatever went wrong (MemoryError too)
            failure = (
                err
                if isinstance(err, ModelError)
                else ModelError(f"load failed: {err!r}", model=entry.spec.name)
            )
            with self._lock:
                entry.error = failure
                entry.leases -= 1
                self._counts["load_failures"] += 1
                if self._active.get(entry.spec.name) is entry:
                    del self._active[entry.spec.name]
                if entry in self._draining:  # swapped out while it loaded
                    self._draining.remove(entry)
                entry.ready.set()
                self._changed.notify_all()
            log.error("%s", failure)
            raise
        with self._lock:
            entry.session, entry.load_ms, entry.warmup_ms = session, load_ms, warmup_ms
            self._counts["loads"] += 1
            entry.ready.set()
        log.info(
            "loaded model %s v%s on %s in %.1f ms (warm-up %.1f ms)",
            entry.spec.name,
            entry.spec.version,
            session.device,
            load_ms,
            warmup_ms,
        )

    def _release(self, entry: _Entry) -> None:
        close: Session | None = None
        with self._lock:
            entry.leases -= 1
            entry.last_used = self._clock()
            if entry.draining and entry.leases == 0:
                self._draining.remove(entry)
                close, entry.session = entry.session, None
            self._changed.notify_all()
        if close is not None:
            close.close()
            log.info("unloaded drained model %s v%s", entry.spec.name, entry.spec.version)

    # -- loading ----------------------------------------------------------------------------

    def _load_session(self, spec: ModelSpec) -> tuple[Session, float, float]:
        started = time.perf_counter()
        path = spec.file
        try:
            actual = file_digest(path)
        except ModelFileError as err:
            raise ModelFileError(f"cannot read {path}: {err}", model=spec.name) from err
        if actual != spec.sha256:
            raise ModelFileError(
                f"{path} does not match its sha256 (expected {spec.sha256[:12]}…, file has {actual[:12]}…): "
                "the file is corrupt, truncated or another version",
                model=spec.name,
            )
        runtime = self._runtimes(spec.runtime)
        session = runtime.open(
            path, preferred=spec.accelerators, threads=self.threads_per_session, cache_dir=self.cache_dir
        )
        try:
            _check_tensors(spec, "input", spec.inputs, session.inputs)
            _check_tensors(spec, "output", spec.outputs, session.outputs)
            loaded = time.perf_counter()
            session.run([_zeros(info) for info in session.inputs])
        except ModelError:
            session.close()
            raise
        done = time.perf_counter()
        return session, (loaded - started) * 1000, (done - loaded) * 1000

    # -- memory budget ----------------------------------------------------------------------

    def _used_mb(self) -> float:
        return sum(e.memory_mb for e in self._active.values()) + sum(e.memory_mb for e in self._draining)

    def _make_room(self, needed_mb: float, *, for_model: str) -> None:
        """Evict least-recently-used, unpinned, unleased models until `needed_mb` fits (lock held)."""
        if needed_mb > self.budget_mb:
            raise BudgetError(
                f"needs {needed_mb:g} MB, over the whole {self.budget_mb:g} MB budget", model=for_model
            )
        while self._used_mb() + needed_mb > self.budget_mb:
            candidates = [
                e
                for e in self._active.values()
                if not e.spec.pinned and e.leases == 0 and e.ready.is_set() and e.spec.name != for_model
            ]
            if not candidates:
                held = ", ".join(_holder(e) for e in [*self._active.values(), *self._draining])
                raise BudgetError(
                    f"needs {needed_mb:g} MB but only {self.budget_mb - self._used_mb():g} MB of the "
                    f"{self.budget_mb:g} MB budget can be freed now; held: {held}",
                    model=for_model,
                )
            victim = min(candidates, key=lambda e: e.last_used)
            del self._active[victim.spec.name]
            self._counts["evictions"] += 1
            if victim.session is not None:
                self._closing.append(victim.session)
                victim.session = None
            log.info(
                "evicted model %s (%g MB) to make room for %s", victim.spec.name, victim.memory_mb, for_model
            )

    def _close_evicted(self) -> None:
        with self._lock:
            sessions, self._closing = self._closing, []
        for session in sessions:
            session.close()

    def unload(self, name: str, *, wait_s: float = 30.0) -> None:
        """Unload `name` once its leases end (waits up to `wait_s`)."""
        deadline = time.monotonic() + wait_s
        with self._lock:
            while (entry := self._active.get(name)) is not None and entry.leases > 0:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or not self._changed.wait(remaining):
                    raise ModelError(f"still leased after {wait_s:g}s; not unloaded", model=name)
            if entry is None:
                return
            del self._active[name]
            session, entry.session = entry.session, None
        if session is not None:
            session.close()

    # -- hot swap ---------------------------------------------------------------------------

    def swap(self, spec: ModelSpec) -> LoadedModelInfo:
        """Load and warm `spec` beside the current version, switch to it, drain and unload the old one.

        Requests in flight finish on the old version; new leases get the new one. If the new version
        fails to load, the old one keeps serving and the error is raised.
        """
        with self._lock:
            self._make_room(spec.memory_mb, for_model=spec.name)
            staged = _Entry(spec, leases=1)
            self._draining.append(staged)  # counted against the budget while it loads
        self._close_evicted()
        try:
            session, load_ms, warmup_ms = self._load_session(spec)
        except BaseException:
            with self._lock:
                self._draining.remove(staged)
                self._counts["load_failures"] += 1
            raise
        close: Session | None = None
        with self._lock:
            self._draining.remove(staged)
            staged.session, staged.load_ms, staged.warmup_ms = session, load_ms, warmup_ms
            staged.leases, staged.last_used = 0, self._clock()
            staged.ready.set()
            old = self._active.get(spec.name)
            self._active[spec.name] = staged
            self._specs[spec.name] = spec
            self._counts["loads"] += 1
            self._counts["swaps"] += 1
            if old is not None:
                if old.leases == 0:
                    close, old.session = old.session, None
                else:
                    old.draining = True
                    self._draining.append(old)
            info = _info(staged)
        if close is not None:
            close.close()
        log.info("swapped model %s to v%s", spec.name, spec.version)
        return info

    # -- stats and shutdown -----------------------------------------------------------------

    def stats(self) -> ManagerStats:
        with self._lock:
            loaded = tuple(
                _info(e) for e in [*self._active.values(), *self._draining] if e.session is not None
            )
            return ManagerStats(
                budget_mb=self.budget_mb, used_mb=self._used_mb(), loaded=loaded, **self._counts
            )

    def close(self) -> None:
        with self._lock:
            entries = [*self._active.values(), *self._draining]
            self._active.clear()
            self._draining.clear()
        for entry in entries:
            if entry.session is not None:
                entry.session.close()
                entry.session = None


def _info(entry: _Entry) -> LoadedModelInfo:
    session = entry.session
    assert session is not None
    return LoadedModelInfo(
        name=entry.spec.name,
        version=entry.spec.version,
        runtime=session.runtime,
        device=session.device,
        memory_mb=entry.memory_mb,
        leases=entry.leases,
        pinned=entry.spec.pinned,
        draining=entry.draining,
        batch_capable=session.batch_capable,
        load_ms=entry.load_ms,
        warmup_ms=entry.warmup_ms,
    )


def _holder(entry: _Entry) -> str:
    why = "pinned" if entry.spec.pinned else f"{entry.leases} leases"
    return f"{entry.spec.name} ({entry.memory_mb:g} MB, {why})"


def _zeros(info: TensorInfo) -> np.ndarray:
    shape = tuple(1 if dim is None else dim for dim in info.shape)
    return np.zeros(shape, dtype=np.float32)


def _check_tensors(
    spec: ModelSpec, kind: str, wanted: Sequence[TensorSpec], actual: Sequence[TensorInfo]
) -> None:
    """The spec's tensors (when given) must match the file's: names, ranks, fixed dimensions."""
    if not wanted:
        return
    if len(wanted) != len(actual):
        raise ModelFileError(f"spec lists {len(wanted)} {kind}s, the file has {len(actual)}", model=spec.name)
    for want, have in zip(wanted, actual, strict=True):
        if want.name != have.name:
            raise ModelFileError(
                f"{kind} {want.name!r} in the spec is {have.name!r} in the file", model=spec.name
            )
        if len(want.shape) != len(have.shape) or any(
            w is not None and h is not None and w != h for w, h in zip(want.shape, have.shape, strict=True)
        ):
            raise ModelFileError(
                f"{kind} {want.name!r} has shape {list(have.shape)} in the file, not {want.shape}",
                model=spec.name,
            )
