"""The session-settings cache: served from memory, read again after its TTL (another process may have changed it)."""

from __future__ import annotations

from conversation.sessions import SessionSettings
from storage.memory import MemoryHistoryStore


async def test_a_change_made_elsewhere_is_seen_after_the_ttl() -> None:
    store = MemoryHistoryStore()
    now = [100.0]
    cache = SessionSettings(store, ttl=5.0, clock=lambda: now[0])
    assert (await cache.get("s")).preset == ""
    await store.update_session("s", preset="猫娘")  # as another bot process on the same database would
    now[0] += 4.9
    assert (await cache.get("s")).preset == ""  # still the cached settings
    now[0] += 0.2
    assert (await cache.get("s")).preset == "猫娘"


async def test_own_changes_apply_at_once_and_without_a_ttl_nothing_is_read_again() -> None:
    store = MemoryHistoryStore()
    cache = SessionSettings(store)
    await cache.update("s", model="m2")
    assert (await cache.get("s")).model == "m2"
    await store.update_session("s", model="m3")
    assert (await cache.get("s")).model == "m2"  # single process: the cache is the truth


async def test_the_cache_is_bounded() -> None:
    cache = SessionSettings(MemoryHistoryStore(), size=3)
    for key in "abcd":
        await cache.get(key)
    assert len(cache._cache) == 3 and "a" not in cache._cache


async def test_the_voice_is_cached_and_kept_beside_the_other_settings() -> None:
    store = MemoryHistoryStore()
    cache = SessionSettings(store)
    await cache.update("s", reply_mode="image")
    await cache.update("s", voice="xiaoxiao")
    state = await cache.get("s")
    assert (state.voice, state.reply_mode) == ("xiaoxiao", "image")
    assert (await store.get_session("s")).voice == "xiaoxiao"  # written through to the store
