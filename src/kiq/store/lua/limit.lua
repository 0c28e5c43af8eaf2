-- limit: one try at a limiter, in one step (docs/limits.md): take a slot of a
-- concurrent limiter, or spend from a bucket, sliding window, leaky bucket or points
-- budget; or say how long until it may succeed. The clock is the server's (TIME), so
-- processes on hosts with skewed clocks share one limit.
-- KEYS[1]: the limiter's HASH kiq|limiter|<name> (definition, counters, bucket state)
-- KEYS[2]: its ZSET (concurrent: kiq|limiter|<name>|holders, token -> lock expiry ms;
--          window: kiq|limiter|<name>|log, call -> ms; other kinds: unused)
-- KEYS[3]: the index kiq|limiters (ZSET name -> last use ms)
-- KEYS[4]: this minute's counts kiq|limiter-stats|<minute> (HASH)
-- KEYS[5]: concurrent: its waiters in line, kiq|limiter|<name>|waiters (ZSET token ->
--          ms it joined); KEYS[6]: their leases, kiq|limiter|<name>|leases (ZSET token
--          -> ms its place ends unless renewed); other kinds: unused
-- ARGV[1]: kind (concurrent, bucket, window, leaky, points); ARGV[2]: name;
-- ARGV[3]: the limit (count, or points); ARGV[4]: ms: the interval (the lock timeout
-- for concurrent); ARGV[5]: cost of this call (1, or the points it spends);
-- ARGV[6]: token (concurrent: the holder's member); ARGV[7]: TTL ms of the limiter's
-- keys; ARGV[8]: ms the caller already waited (0: first try); ARGV[9]: ms the caller
-- may still wait (a refusal it will not wait out counts as over limit: none left, or a
-- rate limit's wait longer than that); ARGV[10]: the minute hash's
-- TTL s; ARGV[11]: most names kept in the index; ARGV[12]: the waiters' wake-up LIST
-- keys without the token (kiq|limiter|<name>|wake|); ARGV[13]: ms a waiter blocks at
-- most between two tries (its lease is that plus as much again)
-- Returns {1, 0, now ms} when the call may go ahead, {0, ms} when refused: ms until it
-- may.
-- Concurrent: a refused caller with time left joins the line (or renews its lease); the
-- free slots go to the oldest live waiters first (handoff, below), so a fresh caller
-- never takes a slot past one; a caller out of time leaves the line in this step.
-- Types are checked before the first write (a script's writes are not rolled back).
local hash, aux, index, minute = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local waiters, leases = KEYS[5], KEYS[6]
local kind, name = ARGV[1], ARGV[2]
local limit, interval, cost = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local ttl = tonumber(ARGV[7])
local checks = {{hash, 'hash'}, {aux, 'zset'}, {index, 'zset'}, {minute, 'hash'}}
if kind == 'concurrent' then
  checks[#checks + 1] = {waiters, 'zset'}
  checks[#checks + 1] = {leases, 'zset'}
end
for _, pair in ipairs(checks) do
  local t = redis.call('TYPE', pair[1]).ok
  if t ~= 'none' and t ~= pair[2] then
    return redis.error_reply('WRONGTYPE ' .. pair[1] .. ' holds a ' .. t .. ', not a ' .. pair[2])
  end
end
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
-- A waiter's place in line is its join time in ms with the microseconds as a fraction:
-- two callers joining within one ms keep their order (in whole ms they tied, and a
-- ZSET orders ties by token, at random). ~1.7e15 is exact in a double.
local joined = tonumber(clock[1]) * 1000 + tonumber(clock[2]) / 1000
local ok, wait = false, 0

-- handoff: the free slots of a concurrent limiter to the oldest live waiters, each
-- made a holder (lock until now + lock ms) and woken on its own list with the grant's
-- ms; counted as waited calls. Waiters whose lease ended (dead, or gone) leave first.
-- The same text is in limit_release.lua (tests/test_limits.py checks they match).
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

if kind == 'concurrent' then
  local token, left = ARGV[6], tonumber(ARGV[9])
  redis.call('ZREMRANGEBYSCORE', aux, '-inf', now)  -- expired locks: their holders died
  if redis.call('ZCARD', waiters) > 0 then  -- someone in line: free slots are theirs
    handoff(aux, waiters, leases, hash, minute, limit, interval, ttl, now, ARGV[12], name,
      tonumber(ARGV[10]))
  end
  -- a retry (it waited: 10 ms or more, its BLPOP) may have been handed a slot, by a
  -- release or just now; a first try's token is new
  if tonumber(ARGV[8]) > 0 and redis.call('ZSCORE', aux, token) then
    redis.call('DEL', ARGV[12] .. token)  -- its wake-up, if not read yet
    return {1, 0, now}  -- counted by the handoff
  end
  local held = redis.call('ZCARD', aux)
  if held < limit then  -- nobody in line (the handoff filled what it could)
    redis.call('ZADD', aux, now + interval, token)
    if held == 0 then redis.call('PEXPIRE', aux, math.max(ttl, interval)) end  -- a new key
    ok = true
  else
    local first = redis.call('ZRANGE', aux, 0, 0, 'WITHSCORES')
    wait = tonumber(first[2]) - now
    if left > 0 then  -- joins the line (kept place if already in it), lease renewed
      local slice = tonumber(ARGV[13])
      redis.call('ZADD', waiters, 'NX', joined, token)
      redis.call('ZADD', leases, now + math.min(left, slice) + slice, token)
      if redis.call('PTTL', waiters) < 0 then redis.call('PEXPIRE', waiters, ttl) end
      if redis.call('PTTL', leases) < 0 then redis.call('PEXPIRE', leases, ttl) end
    else  -- gives up: out of the line in the same step that saw no slot for it
      redis.call('ZREM', waiters, token)
      redis.call('ZREM', leases, token)
    end
  end
elseif kind == 'bucket' then
  local w = math.floor(now / interval)
  local state = redis.call('HMGET', hash, 'w', 'n')
  local n = 0
  if tonumber(state[1]) == w then n = tonumber(state[2]) or 0 end
  if n + cost <= limit then
    redis.call('HSET', hash, 'w', w, 'n', n + cost)
    ok = true
  else
    wait = (w + 1) * interval - now
  end
elseif kind == 'window' then
  redis.call('ZREMRANGEBYSCORE', aux, '-inf', now - interval)
  local calls = redis.call('ZCARD', aux)
  if calls < limit then
    local seq = redis.call('HINCRBY', hash, 'seq', 1)
    redis.call('ZADD', aux, now, now .. '-' .. seq)
    if calls == 0 then redis.call('PEXPIRE', aux, math.max(ttl, interval)) end  -- a new key
    ok = true
  else
    local first = redis.call('ZRANGE', aux, 0, 0, 'WITHSCORES')
    wait = tonumber(first[2]) + interval - now
  end
else  -- leaky, points: a bucket of `limit` that drains `limit` per interval
  local state = redis.call('HMGET', hash, 'level', 'at')
  local rate = limit / interval
  local level = tonumber(state[1]) or 0
  local at = tonumber(state[2]) or now
  level = math.max(0, level - (now - at) * rate)
  if level + cost <= limit then
    level = level + cost
    ok = true
  else
    wait = math.ceil((level + cost - limit) / rate)
  end
  redis.call('HSET', hash, 'level', string.format('%.6f', level), 'at', now)
end

-- Housekeeping (the definition, the TTLs, the index) at most once a second (or half
-- the TTL), not on every call: it is most of a call's commands and changes nothing
-- between two calls a millisecond apart.
local seen = tonumber(redis.call('HGET', hash, 'seen') or '0') or 0
local fresh = now - seen < math.min(1000, ttl / 2)
local counted
if ok then
  redis.call('HINCRBY', hash, 'held', 1)
  counted = redis.call('HINCRBY', minute, name .. '|held', 1)
  local waited = tonumber(ARGV[8])
  if waited > 0 then
    redis.call('HINCRBY', hash, 'waited', 1)
    redis.call('HINCRBY', hash, 'wait_ms', waited)
    redis.call('HINCRBY', minute, name .. '|waited', 1)
  else
    redis.call('HINCRBY', hash, 'immediate', 1)
  end
elseif tonumber(ARGV[9]) <= 0 or (kind ~= 'concurrent' and wait > tonumber(ARGV[9])) then
  redis.call('HINCRBY', hash, 'overlimit', 1)
  counted = redis.call('HINCRBY', minute, name .. '|overlimit', 1)
end
if counted == 1 or not fresh then redis.call('EXPIRE', minute, tonumber(ARGV[10])) end
if not fresh then
  redis.call('HSET', hash, 'kind', kind, 'limit', ARGV[3], 'interval', ARGV[4], 'seen', now)
  redis.call('PEXPIRE', hash, math.max(ttl, interval))
  if kind == 'concurrent' or kind == 'window' then
    redis.call('PEXPIRE', aux, math.max(ttl, interval))
  end
  if kind == 'concurrent' then
    redis.call('PEXPIRE', waiters, ttl)
    redis.call('PEXPIRE', leases, ttl)
  end
  redis.call('ZADD', index, now, name)
  if redis.call('PTTL', index) < ttl then redis.call('PEXPIRE', index, ttl) end
  local extra = redis.call('ZCARD', index) - tonumber(ARGV[11])
  if extra > 0 then redis.call('ZREMRANGEBYRANK', index, 0, extra - 1) end
end
if ok then return {1, 0, now} end
return {0, math.max(1, wait)}
