"""Who each API key is, remembered by an API process between requests.

Every request would otherwise read its key from Postgres in a session of its own: two round trips
(the query, and the rollback that ends the session) before its real work, three in five of a job
read's. Keys change rarely, and when one changes the database says so: a trigger NOTIFYs
`api_key_changes` with the key's tenant as a key is revoked or deleted (migration 0007), and the
API's listener (api/job_events.py) drops that tenant's keys when the notice arrives.

The cache is trusted only while the listener is connected. Until it connects, and from the moment
it drops, the cache is off and every request reads Postgres, so a notice lost in a reconnect costs
nothing. A lookup that raced a notice (read before the revocation committed, stored after its notice
was handled) is not kept: each notice moves `generation` on, and an entry read under an older one is
thrown away. Only valid keys are kept (an unknown key may be created at any moment, unannounced),
and each for at most `MAX_AGE_S`: a bound for what nothing above foresaw.

So a revoked key stops working as soon as its API processes hear of it, milliseconds after the
revocation commits, and never later than `MAX_AGE_S`.
"""

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from jobs.api_keys import Principal, authenticate, hash_key
from jobs.db import SessionFactory

MAX_AGE_S = 60.0
MAX_KEYS = 10_000  # past it the older half is dropped


@dataclass(frozen=True)
class _Kept:
    principal: Principal
    stored_at: float


class KeyCache:
    """Valid keys by hash; off (every lookup reads Postgres) until `go_live`."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._live = False
        self._generation = 0
        self._keys: dict[str, _Kept] = {}

    @property
    def live(self) -> bool:
        return self._live

    def __len__(self) -> int:
        return len(self._keys)

    def kept(self, secret: str) -> Principal | None:
        """The key's principal if it is kept and may be trusted; None: read it (`principal`). No I/O."""
        kept = self._keys.get(hash_key(secret))
        if kept is not None and self._live and self._clock() - kept.stored_at <= MAX_AGE_S:
            return kept.principal
        return None

    def principal(self, sessions: SessionFactory, secret: str) -> Principal | None:
        """The key's principal (None: unknown or revoked), kept from an earlier request or read now."""
        if (kept := self.kept(secret)) is not None:
            return kept
        key_hash = hash_key(secret)
        generation = self._generation
        with sessions() as session:
            principal = authenticate(session, secret)
        if principal is not None:
            self._keep(key_hash, principal, generation)
        return principal

    def go_live(self) -> None:
        """The listener is connected: from now on every change is heard, and keys may be kept."""
        with self._lock:
            self._forget_all()
            self._live = True

    def go_dark(self) -> None:
        """The listener lost its connection: a change may go unheard, so nothing is kept or used."""
        with self._lock:
            self._live = False
            self._forget_all()

    def forget(self, tenant: str) -> None:
        """A key of `tenant` was revoked or deleted: drop all of the tenant's."""
        with self._lock:
            self._generation += 1
            for key_hash in [key_hash for key_hash, kept in self._keys.items() if kept.principal.tenant == tenant]:
                del self._keys[key_hash]

    def _keep(self, key_hash: str, principal: Principal, generation: int) -> None:
        with self._lock:
            if not self._live or generation != self._generation:
                return  # read before a change this process has heard of since: it may be stale
            if len(self._keys) >= MAX_KEYS:
                for old in sorted(self._keys, key=lambda k: self._keys[k].stored_at)[: MAX_KEYS // 2]:
                    del self._keys[old]
            self._keys[key_hash] = _Kept(principal, self._clock())

    def _forget_all(self) -> None:
        self._generation += 1
        self._keys.clear()
