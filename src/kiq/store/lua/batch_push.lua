-- batch_push: push jobs and make them members of their batch in one step, so a job is
-- never counted without being pushed nor pushed without being counted (Sidekiq Pro
-- writes the batch's jids with the push). A jid already pending is pushed again but
-- not counted twice.
-- KEYS[1]: b-<bid>; KEYS[2]: b-<bid>-jids; KEYS[3]: queues; KEYS[4]: schedule;
-- KEYS[4 + i] (i from 1): the queue key (queue:<name>) of job i
-- ARGV[1]: TTL seconds; then 4 per job: jid, queue name, at ('' = push now; else the
-- schedule score), the encoded payload
-- Returns the number of jobs newly counted. Errors (nothing written): the batch does
-- not exist (expired, or never opened), was invalidated, or a key has another type.
local kind = redis.call('TYPE', KEYS[1]).ok
if kind == 'none' then
  return redis.error_reply('KIQBATCH ' .. KEYS[1] .. ' does not exist (expired, or never opened)')
end
if kind ~= 'hash' then
  return redis.error_reply('WRONGTYPE ' .. KEYS[1] .. ' is a ' .. kind .. ', not a batch hash')
end
if redis.call('HEXISTS', KEYS[1], 'invalidated') == 1 then
  return redis.error_reply('KIQBATCH ' .. KEYS[1] .. ' was invalidated: it takes no jobs')
end
local t = redis.call('TYPE', KEYS[2]).ok
if t ~= 'none' and t ~= 'set' then
  return redis.error_reply('WRONGTYPE ' .. KEYS[2] .. ' is a ' .. t .. ', not a set')
end
for i = 5, #KEYS do
  t = redis.call('TYPE', KEYS[i]).ok
  if t ~= 'none' and t ~= 'list' then
    return redis.error_reply('WRONGTYPE ' .. KEYS[i] .. ' is a ' .. t .. ', not a list')
  end
end
local added = 0
for i = 0, (#ARGV - 1) / 4 - 1 do
  local a = 1 + i * 4
  added = added + redis.call('SADD', KEYS[2], ARGV[a + 1])
  if ARGV[a + 3] == '' then
    redis.call('LPUSH', KEYS[5 + i], ARGV[a + 4])
    redis.call('SADD', KEYS[3], ARGV[a + 2])
  else
    redis.call('ZADD', KEYS[4], ARGV[a + 3], ARGV[a + 4])
  end
end
if added > 0 then
  redis.call('HINCRBY', KEYS[1], 'total', added)
  redis.call('HINCRBY', KEYS[1], 'pending', added)
end
redis.call('EXPIRE', KEYS[1], ARGV[1])
redis.call('EXPIRE', KEYS[2], ARGV[1])
return added
