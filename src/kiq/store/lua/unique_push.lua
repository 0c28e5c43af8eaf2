-- unique_push: take each job's unique lock and, only if it was free, push the job, in one
-- step (Sidekiq Enterprise's unique jobs; docs/unique.md). A push whose lock is held
-- writes nothing, and no other client can slip in between the check and the write.
-- KEYS[1]: queues; KEYS[2]: schedule; then per job i (from 0): KEYS[3 + 2i]: its lock
-- (unique:<digest>), KEYS[4 + 2i]: its queue (queue:<name>)
-- ARGV, 5 per job: jid (the lock's value), lock TTL in ms, queue name, at ("" = push
-- now; else the schedule score), the encoded payload
-- Returns one integer per job, in order: 1 pushed, 0 refused (its lock is held, or an
-- earlier job of this call took it). The types of queues, schedule and every queue key
-- are checked before the first write: a script keeps the writes made before an error,
-- and a lock taken for a job that was not pushed would refuse its copies for nothing.
local function expect(key, kind)
  local t = redis.call('TYPE', key)['ok']
  if t ~= kind and t ~= 'none' then
    return redis.error_reply('WRONGTYPE ' .. key .. ' is a ' .. t .. ', not a ' .. kind)
  end
end
local bad = expect(KEYS[1], 'set') or expect(KEYS[2], 'zset')
if bad then return bad end
local n = #ARGV / 5
for i = 0, n - 1 do
  if ARGV[i * 5 + 4] == '' then
    bad = expect(KEYS[4 + 2 * i], 'list')
    if bad then return bad end
  end
end
local out = {}
for i = 0, n - 1 do
  local a = i * 5
  if redis.call('SET', KEYS[3 + 2 * i], ARGV[a + 1], 'NX', 'PX', ARGV[a + 2]) then
    if ARGV[a + 4] == '' then
      redis.call('SADD', KEYS[1], ARGV[a + 3])
      redis.call('LPUSH', KEYS[4 + 2 * i], ARGV[a + 5])
    else
      redis.call('ZADD', KEYS[2], ARGV[a + 4], ARGV[a + 5])
    end
    out[i + 1] = 1
  else
    out[i + 1] = 0
  end
end
return out
