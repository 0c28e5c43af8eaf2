-- fetch: acknowledge finished jobs and take up to N new ones, in one round trip.
-- KEYS[1]: kiq|ahead|<identity> (SET: taken jobs not yet allowed to start);
-- KEYS[2]: kiq|fetch-call|<identity> (STRING: "<call id>|<count per queue>", the last call);
-- then queue:q1, inprogress:q1, queue:q2, inprogress:q2, ... (fetch order); then, per
-- limited queue (queue permits, below): kiq|qlimit|<q>, kiq|qlimit|<q>|rate
-- ARGV[1]: max jobs to take; ARGV[2]: number of acks; ARGV[3]: call id ("" = no record);
-- ARGV[4]: index (1-based) of the first taken job to mark ahead (> max: none);
-- ARGV[5]: number of releases; ARGV[6]: seconds the call record lives; then per ack:
-- its in-progress key, its raw job; then the raw jobs to release (SREM from the ahead
-- set: they may start now); then (optional) the number m of limited queues, this
-- process's identity, the permit lease in ms, and per limited queue: its index among
-- the queue pairs, concurrency (0: none), rate count (0: none), rate period ms, and the
-- in-progress key of any identity split around it (head, tail).
-- Returns a flat list: marked (1 if the jobs from ARGV[4] on are in the ahead set), the
-- number n of queues skipped, n pairs (queue index, "<key>: <error>"), then per taken job
-- the 1-based index of its queue in the KEYS pairs and the raw job. Acks first, so one
-- round trip both frees and refills a process's slots; each taken job is in its
-- in-progress list before the reply leaves (at-least-once).
-- Ahead marks (issue 12): a job taken beyond the free slots waits in the worker; it is
-- in the ahead set until a later call releases it, and only then may it start, so a
-- recovery blames (kiq_recoveries + 1) only the jobs of a dead process that may have run.
-- A retried call (same call id: its reply was lost, redis-py or the fetcher sent it
-- again) takes nothing new: it returns the jobs the first one took, which are the newest
-- of each in-progress list, so no job is left in a live process's list unknown to it.
-- A queue whose key (or in-progress key) holds another type is skipped and reported
-- (issue 12). A script's writes are not rolled back when it fails, so a WRONGTYPE must
-- not abort it halfway: pcall, and jobs popped but not stored in in-progress go
-- straight back to the tail they came from.
local want = tonumber(ARGV[1])
local nacks = tonumber(ARGV[2])
local call = ARGV[3]
local mark_from = tonumber(ARGV[4])
local nrel = tonumber(ARGV[5])
for i = 1, nacks do
  redis.pcall('LREM', ARGV[5 + 2 * i], -1, ARGV[6 + 2 * i])
end
local first_rel = 7 + 2 * nacks
for i = first_rel, first_rel + nrel - 1, 100 do
  redis.pcall('SREM', KEYS[1], unpack(ARGV, i, math.min(i + 99, first_rel + nrel - 1)))
end
local out = {}
local last = call ~= '' and redis.pcall('GET', KEYS[2])
if type(last) == 'string' and string.sub(last, 1, #call + 1) == call .. '|' then
  local index = 0
  for count in string.gmatch(string.sub(last, #call + 2), '[^,]+') do
    index = index + 1
    local n = tonumber(count)
    if n > 0 then
      local items = redis.call('LRANGE', KEYS[2 + 2 * index], 0, n - 1)
      for j = #items, 1, -1 do
        out[#out + 1] = index
        out[#out + 1] = items[j]
      end
    end
  end
  local reply = {1, 0}
  for _, v in ipairs(out) do reply[#reply + 1] = v end
  return reply
end
local bad = {}
-- Queue permits (issue 16, docs/limits.md): a limited queue gives at most what its
-- limits allow now. Concurrency counts the jobs every permit holder has in progress
-- (its in-progress list: fetched, not yet acked) among the holders whose lease is live;
-- this process renews its own lease on every fetch, so a killed process stops counting
-- once its lease ends. The rate is a leaky bucket of `count` draining count/period.
-- The holders' in-progress keys are built here from the head and tail kiq.keys gives:
-- which processes hold permits is known only inside the step.
local base = first_rel + nrel
local nlim = tonumber(ARGV[base] or '0')
local npairs = (#KEYS - 2 - 2 * nlim) / 2
local room, rates = {}, {}
if nlim > 0 then
  local clock = redis.call('TIME')
  local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
  local identity, lease = ARGV[base + 1], tonumber(ARGV[base + 2])
  for j = 0, nlim - 1 do
    local a = base + 3 + 6 * j
    local q = tonumber(ARGV[a])
    local conc, rcount, rperiod = tonumber(ARGV[a + 1]), tonumber(ARGV[a + 2]), tonumber(ARGV[a + 3])
    local holders, rate = KEYS[2 + 2 * npairs + 2 * j + 1], KEYS[2 + 2 * npairs + 2 * j + 2]
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
local counts = {}
if want > 0 then
  for i = 3, 2 + 2 * npairs, 2 do
    local q = (i - 1) / 2
    local take = want
    if room[q] ~= nil then take = math.min(want, room[q]) end
    local taken = 0
    local items = false
    if take > 0 then items = redis.pcall('RPOP', KEYS[i], take) end
    if type(items) == 'table' and items.err then
      bad[#bad + 1] = (i - 1) / 2
      bad[#bad + 1] = KEYS[i] .. ': ' .. items.err
    elseif items then
      local pushed = redis.pcall('LPUSH', KEYS[i + 1], unpack(items))
      if type(pushed) == 'table' and pushed.err then
        for j = #items, 1, -1 do redis.call('RPUSH', KEYS[i], items[j]) end
        bad[#bad + 1] = (i - 1) / 2
        bad[#bad + 1] = KEYS[i + 1] .. ': ' .. pushed.err
      else
        for _, item in ipairs(items) do
          out[#out + 1] = (i - 1) / 2
          out[#out + 1] = item
        end
        taken = #items
        want = want - #items
        if room[q] ~= nil then room[q] = room[q] - #items end
      end
    end
    counts[#counts + 1] = taken
    if want <= 0 then break end
  end
end
for q, r in pairs(rates) do  -- what this fetch took from a rate-limited queue is spent
  local taken = counts[q] or 0
  redis.call('HSET', r[1], 'level', string.format('%.6f', r[2] + taken), 'at', r[3])
  redis.call('PEXPIRE', r[1], math.ceil(r[4]))
end
local marked = 1
if #out >= 2 * mark_from then
  local ahead = {}
  for j = 2 * mark_from, #out, 2 do ahead[#ahead + 1] = out[j] end
  local added = redis.pcall('SADD', KEYS[1], unpack(ahead))
  if type(added) == 'table' and added.err then marked = 0 end
end
if call ~= '' and #out > 0 then
  redis.pcall('SET', KEYS[2], call .. '|' .. table.concat(counts, ','), 'EX', ARGV[6])
end
local reply = {marked, #bad / 2}
for _, v in ipairs(bad) do reply[#reply + 1] = v end
for _, v in ipairs(out) do reply[#reply + 1] = v end
return reply
