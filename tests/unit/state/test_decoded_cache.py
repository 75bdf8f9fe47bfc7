from __future__ import annotations

from enrollstream.state import DecodedCache


def test_the_least_recently_used_entries_leave_first_and_the_weight_stays_within_the_budget() -> None:
    cache: DecodedCache[str] = DecodedCache(budget_bytes=300)
    for key in ("a", "b", "c"):
        cache.put(key, key.upper(), 100)
    assert cache.get("a") == "A"  # now the most recent
    cache.put("d", "D", 100)
    assert "b" not in cache and {"a", "c", "d"} == {k for k in "abcd" if k in cache}
    assert cache.weight == 300


def test_an_entry_heavier_than_the_whole_budget_is_not_kept() -> None:
    cache: DecodedCache[str] = DecodedCache(budget_bytes=100)
    cache.put("a", "A", 60)
    cache.put("huge", "H", 101)
    assert "huge" not in cache and cache.get("a") == "A" and cache.weight == 60


def test_replacing_an_entry_reweighs_it_and_shrinking_the_budget_evicts() -> None:
    cache: DecodedCache[str] = DecodedCache(budget_bytes=1000)
    cache.put("a", "A", 400)
    cache.put("a", "A2", 100)
    cache.put("b", "B", 500)
    assert cache.weight == 600 and cache.get("a") == "A2"
    cache.resize(550)  # "b" is now the least recent
    assert "b" not in cache and cache.weight == 100
    cache.discard("a")
    assert cache.weight == 0 and len(cache) == 0
