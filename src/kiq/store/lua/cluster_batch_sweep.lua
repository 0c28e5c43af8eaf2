-- cluster_batch_sweep: one batch family's part of the outbox sweep (Redis Cluster;
-- kiq.store.cluster_batches), on the family's slot. The sweep found the family in its
-- index (kiq|batch-outboxes, global slot) with a score older than its grace. An outbox
-- holding entries is returned for the sweep to deliver (cluster_batch_deliver.lua);
-- an empty one is sealed with that score before the sweep removes the index entry, so
-- a writer whose stamp is not above it writes nothing (cluster_batch_add.lua refuses
-- it, and it stamps again): no entry can land in an outbox the index no longer names.
-- KEYS[1]: the family's outbox (HASH); KEYS[2]: its seal (STRING, a score)
-- ARGV[1]: the index score the sweep read; ARGV[2]: the seal's TTL, seconds
-- Returns the outbox as field, value, ... (not sealed), or {} (empty: sealed).
-- Every check comes before the first write.
for i, want in ipairs({'hash', 'string'}) do
  local t = redis.call('TYPE', KEYS[i]).ok
  if t ~= want and t ~= 'none' then
    return redis.error_reply('WRONGTYPE ' .. KEYS[i] .. ' is a ' .. t .. ', not a ' .. want)
  end
end
if redis.call('HLEN', KEYS[1]) > 0 then return redis.call('HGETALL', KEYS[1]) end
local seal = redis.call('GET', KEYS[2])
if not seal or tonumber(seal) < tonumber(ARGV[1]) then seal = ARGV[1] end
redis.call('SET', KEYS[2], seal, 'EX', tonumber(ARGV[2]))  -- seals only rise
return {}
