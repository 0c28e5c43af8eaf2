-- limit_release: give back what a limiter call took, in one step (docs/limits.md).
-- concurrent: remove the holder's lock and push one wake-up for a waiter (BLPOP);
-- points: add the difference between the points used and the estimate spent.
-- KEYS[1]: the limiter's HASH; KEYS[2]: its holders ZSET; KEYS[3]: its free LIST
-- ARGV[1]: kind; ARGV[2]: token (concurrent) or the points to add back (points, may be
-- negative); ARGV[3]: the limit; ARGV[4]: TTL ms of the free list
-- Returns 1 if something was given back, 0 if not (a lock that expired already).
if ARGV[1] == 'concurrent' then
  if redis.call('ZREM', KEYS[2], ARGV[2]) == 0 then return 0 end
  if redis.call('TYPE', KEYS[3]).ok ~= 'list' and redis.call('EXISTS', KEYS[3]) == 1 then
    return 1  -- not ours to write; waiters still find the slot by their own timeout
  end
  redis.call('LPUSH', KEYS[3], 1)
  redis.call('LTRIM', KEYS[3], 0, tonumber(ARGV[3]) - 1)
  redis.call('PEXPIRE', KEYS[3], tonumber(ARGV[4]))
  return 1
end
local level = tonumber(redis.call('HGET', KEYS[1], 'level'))
if level == nil then return 0 end
level = math.max(0, level - tonumber(ARGV[2]))  -- above the limit: overspent, paid back by waiting
redis.call('HSET', KEYS[1], 'level', string.format('%.6f', level))
return 1
