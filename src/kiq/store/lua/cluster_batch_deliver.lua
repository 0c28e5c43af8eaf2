-- cluster_batch_deliver: push a batch family's outbox entries to one queue shard, each
-- once (Redis Cluster; kiq.store.cluster_batches): a claim per entry on the shard's
-- slot, taken in the same step as the push, so a delivery repeated after a crash (the
-- outbox entry is deleted after this, on the batch's slot) pushes nothing twice.
-- KEYS[1]: kiq|batch-claims|{<s>} (ZSET claim -> epoch s); KEYS[2]: queue:{<s>};
-- KEYS[3]: schedule:{<s>}
-- ARGV[1]: now (epoch s); ARGV[2]: claims older than this many seconds are dropped;
-- then 3 per entry: the claim ('<bid>|j|<jid>', '<bid>|c|<event>'), at ('' = push now;
-- else the schedule score), the encoded payload.
-- Returns the number of entries pushed now (the others were pushed before).
-- Every check comes before the first write.
for i, want in ipairs({'zset', 'list', 'zset'}) do
  local t = redis.call('TYPE', KEYS[i]).ok
  if t ~= want and t ~= 'none' then
    return redis.error_reply('WRONGTYPE ' .. KEYS[i] .. ' is a ' .. t .. ', not a ' .. want)
  end
end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', '(' .. (tonumber(ARGV[1]) - tonumber(ARGV[2])))
local pushed = 0
for i = 3, #ARGV, 3 do
  if redis.call('ZADD', KEYS[1], 'NX', ARGV[1], ARGV[i]) == 1 then
    if ARGV[i + 1] == '' then
      redis.call('LPUSH', KEYS[2], ARGV[i + 2])
    else
      redis.call('ZADD', KEYS[3], ARGV[i + 1], ARGV[i + 2])
    end
    pushed = pushed + 1
  end
end
return pushed
