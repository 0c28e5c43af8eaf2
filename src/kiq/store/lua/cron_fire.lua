-- cron_fire: claim one tick of a recurring job and push its run, in one step.
-- KEYS[1]: cron_job:<name>:enqueued (ZSET of fired ticks; the claim)
-- KEYS[2]: queues; KEYS[3]: queue:<q>; KEYS[4]: cron_job:<name> (HASH)
-- KEYS[5]: cron_job:<name>:jid_history (LIST)
-- ARGV[1]: the tick's claim member ("" = no claim: "Enqueue now"); ARGV[2]: its score
-- ARGV[3]: <q>; ARGV[4]: the job to push; ARGV[5]: last_enqueue_time
-- ARGV[6]: the jid history entry; ARGV[7]: history entries kept
-- ARGV[8]: claims scored at or below this are dropped (older than a day)
-- Returns 1 if this caller claimed the tick and pushed, 0 if the tick was claimed before.
--
-- A script that fails midway keeps its earlier writes, so every check that can fail
-- comes before the first write: the claim is read first (ZSCORE raises WRONGTYPE on a
-- bad claim set, before anything is written) and every key written is type-checked.
-- The push comes before the claim, so nothing after the first write can fail for a
-- reason Redis could report (after its first write a script may go on past maxmemory).
-- So an error can neither claim a tick without pushing it (lost) nor push it unclaimed
-- (doubled: another poller would push it again).
local function expect(key, want)
  local t = redis.call('TYPE', key)['ok']
  if t ~= want and t ~= 'none' then
    return redis.error_reply('WRONGTYPE ' .. key .. ' is a ' .. t .. ', not a ' .. want)
  end
end
if ARGV[1] ~= '' and redis.call('ZSCORE', KEYS[1], ARGV[1]) then return 0 end
for i, want in ipairs({'zset', 'set', 'list', 'hash', 'list'}) do
  local bad = expect(KEYS[i], want)
  if bad then return bad end
end
redis.call('SADD', KEYS[2], ARGV[3])
redis.call('LPUSH', KEYS[3], ARGV[4])
if ARGV[1] ~= '' then
  redis.call('ZADD', KEYS[1], ARGV[2], ARGV[1])
  redis.call('ZREMRANGEBYSCORE', KEYS[1], 0, ARGV[8])
end
redis.call('HSET', KEYS[4], 'last_enqueue_time', ARGV[5])
redis.call('LPUSH', KEYS[5], ARGV[6])
redis.call('LTRIM', KEYS[5], 0, tonumber(ARGV[7]) - 1)
return 1
