-- fetch: acknowledge finished jobs and take up to N new ones, in one round trip.
-- KEYS: queue:q1, inprogress:q1, queue:q2, inprogress:q2, ... (fetch order); then, per
--       limited queue (queue permits, below): kiq|qlimit|<q>, kiq|qlimit|<q>|rate
-- ARGV[1]: max jobs to take; ARGV[2]: number of acks; then per ack: its in-progress
--          key, its raw job; then (optional) the number m of limited queues, this
--          process's identity, the permit lease in ms, and per limited queue: its index
--          among the queue pairs, concurrency (0: none), rate count (0: none), rate
--          period ms, and the in-progress key of any identity split around it (head, tail).
-- Returns a flat list: the 1-based index of the job's queue in KEYS pairs, the raw job,
-- and so on. Acks first, so one round trip both frees and refills a process's slots;
-- each taken job is in its in-progress list before the reply leaves (at-least-once).
-- If n queues were skipped because their key (or in-progress key) holds another type,
-- the list is led by 0, n, then n pairs (queue index, "<key>: <error>"): the other
-- queues are still served (issue 12). A script's writes are not rolled back when it
-- fails, so a WRONGTYPE must not abort it halfway: pcall, and jobs popped but not
-- stored in in-progress go straight back to the tail they came from.
local want = tonumber(ARGV[1])
local nacks = tonumber(ARGV[2])
for i = 1, nacks do
  redis.pcall('LREM', ARGV[1 + 2 * i], -1, ARGV[2 + 2 * i])
end
local out = {}
local bad = {}
-- Queue permits (issue 16, docs/limits.md): a limited queue gives at most what its
-- limits allow now. Concurrency counts the jobs every permit holder has in progress
-- (its in-progress list: fetched, not yet acked) among the holders whose lease is live;
-- this process renews its own lease on every fetch, so a killed process stops counting
-- once its lease ends. The rate is a leaky bucket of `count` draining count/period.
-- The holders' in-progress keys are built here from the head and tail kiq.keys gives:
-- which processes hold permits is known only inside the step (kiq is not for Cluster).
local base = 3 + 2 * nacks
local nlim = tonumber(ARGV[base] or '0')
local npairs = (#KEYS - 2 * nlim) / 2
local room, rates = {}, {}
if nlim > 0 then
  local clock = redis.call('TIME')
  local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
  local identity, lease = ARGV[base + 1], tonumber(ARGV[base + 2])
  for j = 0, nlim - 1 do
    local a = base + 3 + 6 * j
    local q = tonumber(ARGV[a])
    local conc, rcount, rperiod = tonumber(ARGV[a + 1]), tonumber(ARGV[a + 2]), tonumber(ARGV[a + 3])
    local holders, rate = KEYS[2 * npairs + 2 * j + 1], KEYS[2 * npairs + 2 * j + 2]
    local th, tr = redis.call('TYPE', holders).ok, redis.call('TYPE', rate).ok
    if (th ~= 'none' and th ~= 'zset') or (tr ~= 'none' and tr ~= 'hash') then
      room[q] = 0
      bad[#bad + 1] = q
      bad[#bad + 1] = holders .. ': a permit key holds another type (' .. th .. ', ' .. tr .. ')'
    else
      local left = want
      if conc > 0 then
        redis.call('ZREMRANGEBYSCORE', holders, '-inf', now)
        redis.call('ZADD', holders, now + lease, identity)
        redis.call('PEXPIRE', holders, 2 * lease)
        local used = 0
        for _, id in ipairs(redis.call('ZRANGE', holders, 0, -1)) do
          local n = redis.pcall('LLEN', ARGV[a + 4] .. id .. ARGV[a + 5])
          if type(n) == 'number' then used = used + n end
        end
        left = math.max(0, math.min(left, conc - used))
      end
      if rcount > 0 then
        local state = redis.call('HMGET', rate, 'level', 'at')
        local drain = rcount / rperiod
        local level = math.max(0, (tonumber(state[1]) or 0) - (now - (tonumber(state[2]) or now)) * drain)
        left = math.max(0, math.min(left, math.floor(rcount - level + 1e-9)))
        rates[q] = {rate, level, now, 2 * rperiod}
      end
      room[q] = left
    end
  end
end
if want <= 0 and #bad == 0 then return out end
for i = 1, 2 * npairs, 2 do
  local q = (i + 1) / 2
  local take = want
  if room[q] ~= nil then take = math.min(want, room[q]) end
  local items = false
  if take > 0 then items = redis.pcall('RPOP', KEYS[i], take) end
  if type(items) == 'table' and items.err then
    bad[#bad + 1] = (i + 1) / 2
    bad[#bad + 1] = KEYS[i] .. ': ' .. items.err
  elseif items then
    local pushed = redis.pcall('LPUSH', KEYS[i + 1], unpack(items))
    if type(pushed) == 'table' and pushed.err then
      for j = #items, 1, -1 do redis.call('RPUSH', KEYS[i], items[j]) end
      bad[#bad + 1] = (i + 1) / 2
      bad[#bad + 1] = KEYS[i + 1] .. ': ' .. pushed.err
    else
      for _, item in ipairs(items) do
        out[#out + 1] = (i + 1) / 2
        out[#out + 1] = item
      end
      want = want - #items
      if room[q] ~= nil then room[q] = room[q] - #items end
      if want <= 0 then break end
    end
  end
end
for q, r in pairs(rates) do  -- what this fetch took from a rate-limited queue is spent
  local taken = 0
  for k = 1, #out, 2 do if out[k] == q then taken = taken + 1 end end
  redis.call('HSET', r[1], 'level', string.format('%.6f', r[2] + taken), 'at', r[3])
  redis.call('PEXPIRE', r[1], math.ceil(r[4]))
end
if #bad == 0 then return out end
local reply = {0, #bad / 2}
for _, v in ipairs(bad) do reply[#reply + 1] = v end
for _, v in ipairs(out) do reply[#reply + 1] = v end
return reply
