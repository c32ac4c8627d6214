"""Job ids that sort in the order they were made: UUIDv7 (RFC 9562), monotonic within a process.

Jobs are ordered by (created_at, id): the claim takes a tenant's oldest first, and the job list shows
the newest first. `created_at` is the transaction's clock, so the jobs written together (a group of
submissions, a `:batch`) share it, and with random ids (UUIDv4) they came out in a random order.
With these ids they come out in the order they were submitted.

An id is the Unix time in milliseconds (48 bits), then 74 random bits (less the version and variant
bits). An id made in the same millisecond as the last one, or while the clock stood back, is the
last one plus a random step instead (RFC 9562, 6.2, method 2, "monotonic random"), so it still
sorts after it and stays hard to guess. Ids of different processes made in one millisecond are not
ordered among themselves; their jobs never share a transaction, hence a `created_at`, anyway.
"""

import secrets
import threading
import time
from uuid import UUID

_RANDOM_BITS = 74  # 12 bits of rand_a, 62 of rand_b
_STEP_BITS = 32  # at most 2^32 per step: 2^42 ids a millisecond before the step reaches the clock's bits

_lock = threading.Lock()
_last = 0  # the last id's 48 bits of milliseconds and 74 random bits, as one number


def time_ordered_id() -> UUID:
    """A new UUIDv7, greater than every id this process made before it."""
    global _last
    fresh = (time.time_ns() // 1_000_000) << _RANDOM_BITS | secrets.randbits(_RANDOM_BITS)
    with _lock:
        if fresh <= _last:
            fresh = _last + 1 + secrets.randbits(_STEP_BITS)
        _last = fresh
    milliseconds, random = fresh >> _RANDOM_BITS, fresh & ((1 << _RANDOM_BITS) - 1)
    rand_a, rand_b = random >> 62, random & ((1 << 62) - 1)
    return UUID(int=milliseconds << 80 | 0x7 << 76 | rand_a << 64 | 0b10 << 62 | rand_b)
