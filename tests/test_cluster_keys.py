"""The cluster key layout: every ``Keys`` builder has a slot rule, and each key lands
where its rule says (kiq.keys.SLOT_RULES; docs/cluster.md). A new feature's key fails
here until it is given a rule: that one line is what makes it cluster-safe."""

from __future__ import annotations

import inspect
from datetime import UTC, date, datetime

import pytest
from redis.crc import key_slot

from kiq.keys import GLOBAL_TAG, SLOT_RULES, ClusterKeys, Keys

SAMPLE = {
    "name": "default",
    "queue": "default",
    "identity": "host:1:abc",
    "kind": "processed",
    "day": date(2026, 12, 7),
    "at": datetime(2026, 12, 7, 1, 2, tzinfo=UTC),
    "klass": "HardJob",
    "label": "v1",
    "jid": "0123456789abcdef01234567",
    "digest": "a" * 40,
    "fate": "cancelled",
    "bid": "b0123456789ab",
    "part": "jids",
    "wid": "w0123456789ab",
    "token": "0123456789abcdef",
}
NOT_BUILDERS = {"cron_name"}  # parses a key, builds none


def builders() -> list[str]:
    names = []
    for name, member in inspect.getmembers(Keys):
        if name.startswith("_") or name in NOT_BUILDERS or name == "prefix":
            continue
        if isinstance(member, property) or inspect.isfunction(member):
            names.append(name)
    return names


def build(keys: Keys, name: str) -> tuple[str, list[object]]:
    member = getattr(Keys, name)  # the signature (ClusterKeys' builders take *args)
    if isinstance(member, property):
        return getattr(keys, name), []
    params = list(inspect.signature(member).parameters)[1:]
    args = [SAMPLE[p] for p in params]
    return getattr(keys, name)(*args), args


def test_every_key_builder_has_a_slot_rule() -> None:
    missing = sorted(set(builders()) - set(SLOT_RULES))
    assert not missing, f"add these to kiq.keys.SLOT_RULES (global, shard or own): {missing}"
    assert set(SLOT_RULES) <= set(builders()), "SLOT_RULES names a builder Keys no longer has"


@pytest.mark.parametrize("prefix", ["", "myapp:"])
@pytest.mark.parametrize("name", sorted(SLOT_RULES))
def test_each_key_lands_where_its_rule_says(name: str, prefix: str) -> None:
    cluster = ClusterKeys(prefix)
    if name == "limiter_wake_prefix":  # a waiter's wake-up list without its token
        key = cluster.limiter_wake_prefix("stripe") + "0123456789abcdef"
        assert key == cluster.limiter_wake("0123456789abcdef", "stripe")
        assert key_slot(key.encode()) == key_slot(cluster.limiter("stripe").encode())
        return
    if SLOT_RULES[name] == "derived":  # inprogress_parts: around an identity
        head, tail = cluster.inprogress_parts("default")
        assert head + "host:1" + tail == cluster.inprogress("host:1", "default")
        return
    key, args = build(cluster, name)
    plain, _ = build(Keys(prefix), name)
    rule = SLOT_RULES[name]
    assert key.startswith(prefix)
    if rule == "global":
        assert GLOBAL_TAG in key
        assert key_slot(key.encode()) == key_slot(cluster.global_slot_key.encode())
        assert key.replace(GLOBAL_TAG, "") == plain  # Sidekiq's name, tagged
    elif rule == "shard":
        shard = str(args[-1])
        assert key_slot(key.encode()) == key_slot(f"{{{shard}}}".encode())
        assert key_slot(key.encode()) == key_slot(cluster.queue(shard).encode())
    elif rule == "batch":
        assert key_slot(key.encode()) == key_slot(f"{{{SAMPLE['bid']}}}".encode())
        assert key.replace("{", "").replace("}", "") == plain  # Sidekiq Pro's name, tagged
    else:
        assert rule == "own"
        assert "{" not in key
        assert key == plain


def test_a_batch_family_shares_one_slot() -> None:
    """A batch, its parts, its children (``<root>.<digest>``) and its outbox on one
    slot: batch_update.lua walks from a child up to the root in one step."""
    keys = ClusterKeys("myapp:")
    root, child = "rootbid0123", "rootbid0123.0a1b2c3d"
    found = {
        key_slot(k.encode())
        for k in (
            keys.batch(root),
            keys.batch(root, "jids"),
            keys.batch(child),
            keys.batch(child, "kids"),
            keys.batch_outbox(child),
        )
    }
    assert found == {key_slot(b"{rootbid0123}")}
    assert keys.batch(child, "jids") == "myapp:b-{rootbid0123}.0a1b2c3d-jids"
    assert keys.batch_outbox(child) == keys.batch(root, "outbox")


def test_a_queue_shard_holds_its_list_in_progress_and_sets() -> None:
    keys = ClusterKeys(partitions=(("hot", 8),))
    for shard in [*keys.shards("hot"), "default"]:
        slots = {
            key_slot(k.encode())
            for k in (
                keys.queue(shard),
                keys.inprogress("host:1:abc", shard),
                keys.schedule_shard(shard),
                keys.retry_shard(shard),
                keys.dead_shard(shard),
                keys.cron_claims(shard),
            )
        }
        assert len(slots) == 1, shard
    assert len({key_slot(keys.queue(s).encode()) for s in keys.shards("hot")}) == 8


def test_partitions_spread_jobs_by_jid() -> None:
    keys = ClusterKeys(partitions=(("hot", 8),))
    assert keys.shards("default") == ["default"]
    counts: dict[str, int] = {}
    for i in range(8000):
        shard = keys.shard_of("hot", f"{i:024x}")
        counts[shard] = counts.get(shard, 0) + 1
    assert sorted(counts) == keys.shards("hot")
    assert min(counts.values()) > 800  # ~1000 each
    assert keys.shard_of("hot", "abc") == keys.shard_of("hot", "abc")
    assert ClusterKeys.queue_of("hot|3") == "hot"


def test_the_outbox_sweeps_keys_land_on_the_global_and_the_family_slots() -> None:
    """The sweep's index is one global key (one ZRANGEBYSCORE a tick finds every family
    with a pending outbox); a family's seal is beside its outbox, so the sweep's check
    and seal, and a push's step 1 that reads the seal, are each one script on one slot."""
    keys = ClusterKeys("myapp:")
    index = keys.batch_outboxes
    assert index == "myapp:{kiq}kiq|batch-outboxes"
    assert key_slot(index.encode()) == key_slot(keys.global_slot_key.encode())
    child = "rootbid0123.0a1b2c3d"
    assert keys.batch_outbox_seal(child) == "myapp:b-{rootbid0123}-outbox-seal"
    assert key_slot(keys.batch_outbox_seal(child).encode()) == key_slot(
        keys.batch_outbox(child).encode()
    )
