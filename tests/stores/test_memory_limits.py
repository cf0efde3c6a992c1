"""What only the ``memory://`` rate limits do: forget full buckets so memory stays bounded.
(What every implementation does is in tests/contracts/test_limits.py.)"""

from __future__ import annotations

from render_gateway.scheduling.token_bucket import BucketConfig, Decision
from render_gateway.stores.memory_limits import MemoryRateLimits

from support.clock import FakeClock


async def test_full_buckets_are_dropped_at_the_next_sweep() -> None:
    clock = FakeClock()
    limits = MemoryRateLimits(clock, prune_every_seconds=10.0)
    config = BucketConfig(2, 1)  # full again 2 s after it is emptied
    for n in range(100):
        await limits.take(f"customer-{n}", config, 2)
    await limits.take("stays", BucketConfig(100, 1), 100)  # still refilling at the sweep
    assert limits.buckets_held() == 101

    clock.advance(9.0)  # all but one are full, but no sweep is due yet
    await limits.take("another", config, 0)
    assert limits.buckets_held() == 102
    clock.advance(1.0)
    await limits.take("another", config, 0)
    assert limits.buckets_held() == 1  # only "stays": the full "another" went too

    # Forgetting a full bucket changed nothing: it reads as full again.
    assert await limits.take("customer-0", config, 0) == Decision(True, 2.0, 0.0, 0.0)
    assert await limits.take("stays", BucketConfig(100, 1), 0) == Decision(True, 10.0, 0.0, 90.0)


async def test_a_bucket_that_never_refills_is_kept() -> None:
    clock = FakeClock()
    limits = MemoryRateLimits(clock, prune_every_seconds=1.0)
    config = BucketConfig(1, 0)
    assert (await limits.take("spent", config)).allowed
    clock.advance(3600)
    await limits.take("other", config, 0)
    assert limits.buckets_held() == 1
    assert not (await limits.take("spent", config)).allowed  # still refused, as it must be


async def test_close_drops_every_bucket() -> None:
    limits = MemoryRateLimits(FakeClock())
    await limits.take("k", BucketConfig(2, 1))
    await limits.close()
    assert limits.buckets_held() == 0
