-- cluster_recover: move one dead process's in-progress list of one queue shard back to
-- the queue (and poison jobs to the shard's dead set), in one step (Redis Cluster: one
-- slot per shard; kiq.store.cluster_procs).
-- KEYS[1]: kiq|inprogress|<identity>|{<s>}; KEYS[2]: queue:{<s>}; KEYS[3]: dead:{<s>};
-- KEYS[4]: kiq|ahead|<identity>|{<s>}, KEYS[5]: kiq|fetch-call|<identity>|{<s>} (fetch.lua's
-- ahead marks and call record of this shard: read by the caller, dropped with the list)
-- ARGV[1]: n, the list's length as read; ARGV[2 .. n+1]: the list as read (LRANGE 0 -1);
-- ARGV[n+2]: r, how many go back; then r raw jobs to RPUSH, in order; then the jobs to
-- bury; the last three: now (their dead score), trim below this score, dead jobs kept.
-- Returns 1 if moved, 0 if the list changed since it was read (the process is alive
-- after all: it fetched or acked), so nothing is written: as the WATCH on one Redis.
local n = tonumber(ARGV[1])
if redis.call('LLEN', KEYS[1]) ~= n then return 0 end
local now = redis.call('LRANGE', KEYS[1], 0, -1)
for i = 1, n do
  if now[i] ~= ARGV[1 + i] then return 0 end
end
for i, want in ipairs({'list', 'list', 'zset'}) do
  local t = redis.call('TYPE', KEYS[i])['ok']
  if t ~= want and t ~= 'none' then
    return redis.error_reply('WRONGTYPE ' .. KEYS[i] .. ' is a ' .. t .. ', not a ' .. want)
  end
end
local r = tonumber(ARGV[n + 2])
local first_buried = n + 3 + r
local last_buried = #ARGV - 3
for i = n + 3, n + 2 + r do redis.call('RPUSH', KEYS[2], ARGV[i]) end
for i = first_buried, last_buried do redis.call('ZADD', KEYS[3], ARGV[#ARGV - 2], ARGV[i]) end
if last_buried >= first_buried then
  redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', ARGV[#ARGV - 1])
  redis.call('ZREMRANGEBYRANK', KEYS[3], 0, -(tonumber(ARGV[#ARGV]) + 1))
end
redis.call('DEL', KEYS[1], KEYS[4], KEYS[5])
return 1
