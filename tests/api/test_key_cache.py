"""API keys kept between requests (api/key_cache.py): only while revocations are heard, never a
revoked key once its notice arrives, never a lookup that raced a revocation."""

import pytest
from fastapi.testclient import TestClient

from api.deps import ApiContext
from api.key_cache import MAX_AGE_S, KeyCache
from api.main import create_app
from jobs.api_keys import revoke_key
from jobs.db import SessionFactory, session_scope
from jobs.settings import Settings
from tests.support.auth import OTHER_TENANT, TENANT, bearer, new_key
from tests.support.waiting import wait_until


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def cache(clock: Clock) -> KeyCache:
    return KeyCache(clock=clock)


def revoke(sessions: SessionFactory, key: str) -> None:
    with session_scope(sessions) as session:
        revoke_key(session, key[:12])


def test_the_api_keeps_a_key_and_refuses_it_soon_after_it_is_revoked(
    settings: Settings, sessions: SessionFactory, empty_tables: None
) -> None:
    key = new_key(sessions)
    with TestClient(create_app(settings)) as client:
        context: ApiContext = client.app.state.context  # type: ignore[attr-defined]
        wait_until(lambda: context.keys.live, "the API's listener connected")
        assert client.get("/v1/jobs", headers=bearer(key)).status_code == 200
        assert len(context.keys) == 1, "the key is kept after its first request"
        assert client.get("/v1/jobs", headers=bearer(key)).status_code == 200
        revoke(sessions, key)
        # The revocation's notice reaches the API's listener moments after the commit.
        wait_until(lambda: client.get("/v1/jobs", headers=bearer(key)).status_code == 401, "revoked key refused", 30)
        assert len(context.keys) == 0


def test_off_until_live_every_lookup_reads_postgres(
    cache: KeyCache, sessions: SessionFactory, empty_tables: None
) -> None:
    key = new_key(sessions)
    assert cache.principal(sessions, key) is not None
    assert len(cache) == 0, "nothing kept while no listener hears revocations"
    revoke(sessions, key)
    assert cache.principal(sessions, key) is None


def test_a_kept_key_is_forgotten_with_its_tenant(cache: KeyCache, sessions: SessionFactory, empty_tables: None) -> None:
    cache.go_live()
    mine, theirs = new_key(sessions), new_key(sessions, OTHER_TENANT)
    assert cache.principal(sessions, mine).tenant == TENANT  # type: ignore[union-attr]
    assert cache.principal(sessions, theirs).tenant == OTHER_TENANT  # type: ignore[union-attr]
    revoke(sessions, mine)
    assert cache.principal(sessions, mine) is not None, "kept: only the notice says it was revoked"
    cache.forget(TENANT)  # what the listener does when the notice arrives
    assert cache.principal(sessions, mine) is None
    assert len(cache) == 1, "the other tenant's key is still kept"


def test_unknown_keys_are_never_kept(cache: KeyCache, sessions: SessionFactory, empty_tables: None) -> None:
    cache.go_live()
    assert cache.principal(sessions, "b2j_" + "x" * 43) is None
    assert len(cache) == 0


def test_a_lookup_that_raced_a_revocation_is_not_kept(
    cache: KeyCache, sessions: SessionFactory, empty_tables: None
) -> None:
    cache.go_live()
    key = new_key(sessions)

    def session_during_which_the_notice_arrives():  # type: ignore[no-untyped-def]
        session = sessions()
        cache.forget(TENANT)  # read before the revocation committed, its notice handled meanwhile
        return session

    assert cache.principal(session_during_which_the_notice_arrives, key) is not None  # type: ignore[arg-type]
    assert len(cache) == 0


def test_a_kept_key_is_read_again_after_its_age_bound(
    cache: KeyCache, clock: Clock, sessions: SessionFactory, empty_tables: None
) -> None:
    cache.go_live()
    key = new_key(sessions)
    assert cache.principal(sessions, key) is not None
    revoke(sessions, key)  # a revocation whose notice never came
    clock.now += MAX_AGE_S - 1
    assert cache.principal(sessions, key) is not None
    clock.now += 2
    assert cache.principal(sessions, key) is None


def test_dark_nothing_is_used(cache: KeyCache, sessions: SessionFactory, empty_tables: None) -> None:
    cache.go_live()
    key = new_key(sessions)
    assert cache.principal(sessions, key) is not None
    revoke(sessions, key)
    cache.go_dark()  # the listener lost its connection: the notice may be lost with it
    assert cache.principal(sessions, key) is None
    assert len(cache) == 0
