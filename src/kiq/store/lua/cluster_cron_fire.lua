-- cluster_cron_fire: claim one tick of a recurring job and push its run, in one step,
-- on the slot of the queue shard it pushes to (Redis Cluster; kiq.store.cluster_procs).
-- KEYS[1]: kiq|cron-claims|{<s>} (ZSET "<name>|<tick>" -> tick); KEYS[2]: queue:{<s>}
-- ARGV[1]: the claim member ("" = no claim: "Enqueue now"); ARGV[2]: its score;
-- ARGV[3]: the job to push; ARGV[4]: claims scored at or below this are dropped.
-- Returns 1 if this caller claimed the tick and pushed, 0 if it was claimed before.
-- Every check comes before the first write (the push, then the claim), as cron_fire.lua.
if ARGV[1] ~= '' and redis.call('ZSCORE', KEYS[1], ARGV[1]) then return 0 end
for i, want in ipairs({'zset', 'list'}) do
  local t = redis.call('TYPE', KEYS[i])['ok']
  if t ~= want and t ~= 'none' then
    return redis.error_reply('WRONGTYPE ' .. KEYS[i] .. ' is a ' .. t .. ', not a ' .. want)
  end
end
redis.call('LPUSH', KEYS[2], ARGV[3])
if ARGV[1] ~= '' then
  redis.call('ZADD', KEYS[1], ARGV[2], ARGV[1])
  redis.call('ZREMRANGEBYSCORE', KEYS[1], 0, ARGV[4])
end
return 1
