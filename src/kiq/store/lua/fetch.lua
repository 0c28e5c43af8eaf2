-- fetch: acknowledge finished jobs and take up to N new ones, in one round trip.
-- KEYS[1]: kiq|ahead|<identity> (SET: taken jobs not yet allowed to start);
-- KEYS[2]: kiq|fetch-call|<identity> (STRING: "<call id>|<count per queue>", the last call);
-- then queue:q1, inprogress:q1, queue:q2, inprogress:q2, ... (fetch order)
-- ARGV[1]: max jobs to take; ARGV[2]: number of acks; ARGV[3]: call id ("" = no record);
-- ARGV[4]: index (1-based) of the first taken job to mark ahead (> max: none);
-- ARGV[5]: number of releases; ARGV[6]: seconds the call record lives; then per ack:
-- its in-progress key, its raw job; then the raw jobs to release (SREM from the ahead
-- set: they may start now).
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
local counts = {}
if want > 0 then
  for i = 3, #KEYS, 2 do
    local taken = 0
    local items = redis.pcall('RPOP', KEYS[i], want)
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
      end
    end
    counts[#counts + 1] = taken
    if want <= 0 then break end
  end
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
