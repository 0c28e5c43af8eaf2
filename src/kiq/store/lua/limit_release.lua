-- limit_release: give back what a limiter call took, in one step (docs/limits.md).
-- concurrent: remove the holder's lock (or a waiter's place in line: a waiter that
-- stops waiting early gives it back the same way), then hand the free slots to the
-- oldest live waiters: each becomes a holder here and is woken on its own list, so a
-- slot goes from holder to waiter in this one step, and no fresh caller takes it first;
-- points: add the difference between the points used and the estimate spent.
-- KEYS[1]: the limiter's HASH; KEYS[2]: its holders ZSET; KEYS[3]: its waiters ZSET
-- (token -> ms it joined); KEYS[4]: their leases ZSET (token -> ms the place ends);
-- KEYS[5]: this minute's counts HASH (the handed slots count as held and waited)
-- ARGV[1]: kind; ARGV[2]: token (concurrent) or the points to add back (points, may be
-- negative); ARGV[3]: the limit; ARGV[4]: the lock timeout ms; ARGV[5]: the wake-up
-- LIST keys without the token (kiq|limiter|<name>|wake|); ARGV[6]: TTL ms of the
-- limiter's keys; ARGV[7]: the minute hash's TTL s; ARGV[8]: the limiter's name
-- Returns 1 if something was given back, 0 if not (a lock that expired already).
-- Nobody in line (no waiters key): only the holder's lock is removed (the common
-- uncontended release: a few commands, no clock, no handoff).
-- Types are checked before the first write (a script's writes are not rolled back).
if ARGV[1] ~= 'concurrent' then
  local level = tonumber(redis.call('HGET', KEYS[1], 'level'))
  if level == nil then return 0 end
  level = math.max(0, level - tonumber(ARGV[2]))  -- above the limit: overspent, paid back by waiting
  redis.call('HSET', KEYS[1], 'level', string.format('%.6f', level))
  return 1
end
local token, wake = ARGV[2], ARGV[5]
local queued = redis.call('EXISTS', KEYS[3]) == 1
local kinds = {'hash', 'zset', 'zset', 'zset', 'hash'}
for i, want in ipairs(kinds) do
  if queued or i == 2 then  -- nobody in line: only the holders are written
    local t = redis.call('TYPE', KEYS[i]).ok
    if t ~= 'none' and t ~= want then
      return redis.error_reply('WRONGTYPE ' .. KEYS[i] .. ' holds a ' .. t .. ', not a ' .. want)
    end
  end
end
redis.call('DEL', wake .. token)  -- a wake-up handed to a waiter that stopped first
if not queued then return redis.call('ZREM', KEYS[2], token) end

-- handoff begin
local function handoff(holders, line, leased, hash, minute, limit, lock, ttl, now, wake, name, stats_ttl)
  local gone = redis.call('ZRANGEBYSCORE', leased, '-inf', now, 'LIMIT', 0, 100)
  if #gone > 0 then
    redis.call('ZREM', line, unpack(gone))
    redis.call('ZREM', leased, unpack(gone))
  end
  local held = redis.call('ZCARD', holders)
  if held >= limit then return end
  local heads = redis.call('ZRANGE', line, 0, limit - held - 1, 'WITHSCORES')
  for i = 1, #heads, 2 do
    local token = heads[i]
    redis.call('ZADD', holders, now + lock, token)
    redis.call('ZREM', line, token)
    redis.call('ZREM', leased, token)
    local woken = wake .. token
    if redis.call('EXISTS', woken) == 0 then  -- else not ours: it finds the slot by retrying
      redis.call('LPUSH', woken, now)
      redis.call('PEXPIRE', woken, lock)
    end
    redis.call('HINCRBY', hash, 'held', 1)
    redis.call('HINCRBY', hash, 'waited', 1)
    redis.call('HINCRBY', hash, 'wait_ms', math.max(0, math.floor(now - tonumber(heads[i + 1]))))
    redis.call('HINCRBY', minute, name .. '|waited', 1)
    if redis.call('HINCRBY', minute, name .. '|held', 1) == 1 then
      redis.call('EXPIRE', minute, stats_ttl)
    end
  end
  if held == 0 and #heads > 0 then redis.call('PEXPIRE', holders, math.max(ttl, lock)) end
end
-- handoff end

local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
redis.call('ZREM', KEYS[3], token)  -- a waiter stopping early (no-op for a holder)
redis.call('ZREM', KEYS[4], token)
local given = redis.call('ZREM', KEYS[2], token)
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)  -- expired locks: their holders died
handoff(KEYS[2], KEYS[3], KEYS[4], KEYS[1], KEYS[5], tonumber(ARGV[3]), tonumber(ARGV[4]),
  tonumber(ARGV[6]), now, wake, ARGV[8], tonumber(ARGV[7]))
return given
