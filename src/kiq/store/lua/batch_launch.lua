-- batch_launch: create a batch with all its jobs in one step, once (a workflow step;
-- docs/workflows.md). If the batch exists, nothing is written: a step launched twice
-- (its predecessor's callback job re-run after a crash, or two predecessors finishing
-- at once) runs its jobs once. No jobs() block is open: the jobs are all known here.
-- KEYS[1]: b-<bid>; KEYS[2]: b-<bid>-jids; KEYS[3]: batches; KEYS[4]: queues;
-- KEYS[5]: schedule; KEYS[5 + i] (i from 1): the queue key (queue:<name>) of job i
-- ARGV[1]: bid; ARGV[2]: TTL seconds; ARGV[3]: created_at; ARGV[4]: n, the number of
-- field/value pairs that follow; ARGV[5 .. 4 + 2n]: the batch's fields; then 4 per
-- job: jid, queue name, at ('' = now; else the schedule score), the encoded payload
-- Returns 1 when launched, 0 when the batch already existed. Errors (nothing written):
-- a key of another type.
local kind = redis.call('TYPE', KEYS[1]).ok
if kind == 'hash' then return 0 end
if kind ~= 'none' then
  return redis.error_reply('WRONGTYPE ' .. KEYS[1] .. ' is a ' .. kind .. ', not a batch hash')
end
for i = 6, #KEYS do
  local t = redis.call('TYPE', KEYS[i]).ok
  if t ~= 'none' and t ~= 'list' then
    return redis.error_reply('WRONGTYPE ' .. KEYS[i] .. ' is a ' .. t .. ', not a list')
  end
end
local ttl = tonumber(ARGV[2])
local nfields = tonumber(ARGV[4])
local first = 5 + 2 * nfields
local jobs = (#ARGV - first + 1) / 4
local fields = {'created_at', ARGV[3], 'total', jobs, 'pending', jobs, 'failures', 0,
                'dead', 0, 'kids', 0, 'kids_pending', 0, 'kids_open', 0, 'parent', '', 'ttl', ttl}
for i = 5, first - 1 do fields[#fields + 1] = ARGV[i] end
redis.call('HSET', KEYS[1], unpack(fields))
redis.call('ZADD', KEYS[3], ARGV[3], ARGV[1])
for i = 0, jobs - 1 do
  local a = first + i * 4
  redis.call('SADD', KEYS[2], ARGV[a])
  if ARGV[a + 2] == '' then
    redis.call('LPUSH', KEYS[6 + i], ARGV[a + 3])
    redis.call('SADD', KEYS[4], ARGV[a + 1])
  else
    redis.call('ZADD', KEYS[5], ARGV[a + 2], ARGV[a + 3])
  end
end
redis.call('EXPIRE', KEYS[1], ttl)
redis.call('EXPIRE', KEYS[2], ttl)
return 1
