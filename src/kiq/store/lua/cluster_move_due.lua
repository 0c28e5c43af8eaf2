-- cluster_move_due: move_due for Redis Cluster, where the ``queues`` set is on another
-- slot (it is SADDed before this script, kiq.store.cluster_sets).
-- KEYS[1]: schedule:{<s>} or retry:{<s>}; KEYS[2]: queue:{<s>} (the same slot)
-- ARGV[1]: the member as read from KEYS[1]; ARGV[2]: the job to push.
-- Returns 1 if this caller removed the member (and pushed it), 0 if another poller had.
-- As move_due.lua: the queue's type is checked before the first write (the ZREM), so a
-- WRONGTYPE leaves the member where it was.
local t = redis.call('TYPE', KEYS[2])['ok']
if t ~= 'list' and t ~= 'none' then
  return redis.error_reply('WRONGTYPE ' .. KEYS[2] .. ' is a ' .. t .. ', not a list')
end
if redis.call('ZREM', KEYS[1], ARGV[1]) == 0 then return 0 end
redis.call('LPUSH', KEYS[2], ARGV[2])
return 1
