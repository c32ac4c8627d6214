"""worker/runtime.py BatchOptions.wait_s: how long a batch with room waits for more jobs."""

import pytest

from worker.runtime import MAX_BATCH_WAIT_S, BatchOptions


def test_a_batch_waits_the_floor_until_a_pass_of_its_kind_took_longer_than_the_share_allows() -> None:
    options = BatchOptions(wait_ms=10, wait_share=0.05)
    assert options.wait_s() == pytest.approx(0.010), "before any pass: --batch-wait-ms"
    assert options.wait_s(0.12) == pytest.approx(0.010), "a fast model's 120 ms pass: 6 ms is under the floor"
    assert options.wait_s(1.8) == pytest.approx(0.090), "a slow model's 1.8 s pass: 5% of it"
    assert options.wait_s(600.0) == pytest.approx(MAX_BATCH_WAIT_S), "never longer than the cap"


def test_a_share_of_zero_keeps_the_wait_fixed_and_a_wait_of_zero_runs_at_once() -> None:
    assert BatchOptions(wait_ms=10, wait_share=0).wait_s(30.0) == pytest.approx(0.010)
    assert BatchOptions(wait_ms=0, wait_share=0).wait_s(30.0) == 0
    assert BatchOptions(wait_ms=0, wait_share=0.05).wait_s(None) == 0
