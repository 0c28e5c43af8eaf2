-- cluster_batch_unindex: remove swept batch families from the sweep's index (Redis
-- Cluster; kiq.store.cluster_batches), on the global slot: each only if its score is
-- still the one the sweep read and sealed (cluster_batch_sweep.lua). A writer that
-- stamped the family since has raised the score (ZADD GT), so its entry stays.
-- KEYS[1]: kiq|batch-outboxes (ZSET root -> stamp)
-- ARGV: 2 per family: the root bid, the score the sweep sealed it with
-- Returns how many entries were removed.
local t = redis.call('TYPE', KEYS[1]).ok
if t ~= 'zset' and t ~= 'none' then
  return redis.error_reply('WRONGTYPE ' .. KEYS[1] .. ' is a ' .. t .. ', not a zset')
end
local removed = 0
for i = 1, #ARGV, 2 do
  local score = redis.call('ZSCORE', KEYS[1], ARGV[i])
  if score and tonumber(score) == tonumber(ARGV[i + 1]) then
    removed = removed + redis.call('ZREM', KEYS[1], ARGV[i])
  end
end
return removed
