-- unique_push: take each job's unique lock and, only if it was free, push the job, in one
-- step (Sidekiq Enterprise's unique jobs; docs/unique.md). A push whose lock is held
-- writes nothing, and no other client can slip in between the check and the write.
-- KEYS[1]: queues; KEYS[2]: schedule; then per job i (from 0): KEYS[3 + 2i]: its lock
-- (unique:<digest>), KEYS[4 + 2i]: its queue (queue:<name>)
-- ARGV, 5 per job: jid (the lock's value), lock TTL in ms, queue name, at ("" = push
-- now; else the schedule score), the encoded payload
-- Returns one integer per job, in order: 1 pushed, 0 refused (its lock is held, or an
-- earlier job of this call took it). A job's write that fails (a key of another type:
-- WRONGTYPE) gives its lock back before the error is returned, so no lock is ever left
-- for a job that was not written; the jobs before it in this call stay pushed, as in a
-- plain push's pipeline. No TYPE checks up front: they cost every push, and the write's
-- own error says the same.
local out = {}
for i = 0, #ARGV / 5 - 1 do
  local a = i * 5
  local lock = KEYS[3 + 2 * i]
  if redis.call('SET', lock, ARGV[a + 1], 'NX', 'PX', ARGV[a + 2]) then
    local written
    if ARGV[a + 4] == '' then
      written = redis.pcall('LPUSH', KEYS[4 + 2 * i], ARGV[a + 5])
    else
      written = redis.pcall('ZADD', KEYS[2], ARGV[a + 4], ARGV[a + 5])
    end
    if type(written) == 'table' and written.err then
      redis.call('DEL', lock)
      return written
    end
    if ARGV[a + 4] == '' then redis.call('SADD', KEYS[1], ARGV[a + 3]) end
    out[i + 1] = 1
  else
    out[i + 1] = 0
  end
end
return out
