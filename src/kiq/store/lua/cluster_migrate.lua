-- cluster_migrate: copy one job from a single Redis into its cluster shard once, however
-- often the migration is re-run (kiq cluster-migrate; kiq.migrate).
-- KEYS[1]: kiq|migrated|{<s>} (SET of the digests of the jobs copied to this shard)
-- KEYS[2]: the target: queue:{<s>} (a list) or schedule/retry/dead:{<s>} (a zset)
-- ARGV[1]: the job's digest; ARGV[2]: the raw job; ARGV[3]: its score ("" = a list push)
-- Returns 1 if copied now, 0 if an earlier run copied it (the source copy is then only
-- deleted). The journal and the copy are one step on one slot: a migration killed at
-- any point neither loses nor doubles a job when it is run again.
local want = ARGV[3] == '' and 'list' or 'zset'
for i, kind in ipairs({'set', want}) do
  local t = redis.call('TYPE', KEYS[i])['ok']
  if t ~= kind and t ~= 'none' then
    return redis.error_reply('WRONGTYPE ' .. KEYS[i] .. ' is a ' .. t .. ', not a ' .. kind)
  end
end
if redis.call('SADD', KEYS[1], ARGV[1]) == 0 then return 0 end
if ARGV[3] == '' then
  redis.call('LPUSH', KEYS[2], ARGV[2])
else
  redis.call('ZADD', KEYS[2], ARGV[3], ARGV[2])
end
redis.call('EXPIRE', KEYS[1], 604800)
return 1
