"""Job ids are UUIDv7: they sort in the order they were made, within a millisecond too."""

import itertools
import threading
import time
from uuid import UUID

from jobs.ids import time_ordered_id


def test_ids_are_version_7_and_strictly_increasing() -> None:
    ids = [time_ordered_id() for _ in range(20_000)]  # many share a millisecond
    assert all((i.version, i.variant) == (7, "specified in RFC 4122") for i in ids)
    assert all(a < b for a, b in itertools.pairwise(ids))
    assert sorted(ids, key=str) == ids, "the text form sorts the same (Postgres compares the bytes)"
    assert len({i.int & (1 << 62) - 1 for i in ids}) == len(ids), "the random bits differ"


def test_an_id_carries_the_time_it_was_made() -> None:
    before = time.time_ns() // 1_000_000
    made = time_ordered_id()
    after = time.time_ns() // 1_000_000
    assert before <= made.int >> 80 <= after + 1  # +1: a step within a crowded millisecond may carry


def test_threads_never_make_the_same_id() -> None:
    made: list[list[UUID]] = [[] for _ in range(4)]

    def make(into: list[UUID]) -> None:
        into.extend(time_ordered_id() for _ in range(5_000))

    threads = [threading.Thread(target=make, args=(ids,)) for ids in made]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    every = [i for ids in made for i in ids]
    assert len(set(every)) == len(every)
    assert all(ids == sorted(ids) for ids in made)
