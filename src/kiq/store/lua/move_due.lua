-- move_due: remove one due member from schedule/retry and push its job, in one step.
-- KEYS[1]: schedule or retry; KEYS[2]: queues; KEYS[3]: queue:<q>
-- ARGV[1]: the member as read from KEYS[1]; ARGV[2]: the job to push ("" = push
--          nothing, only remove); ARGV[3]: <q>.
-- Returns 1 if this caller removed the member, 0 if another poller had.
-- Sidekiq's scheduled.rb pops the member, then pushes it: a process killed in between
-- loses the job. Here the removal and the push are one step, and only the poller whose
-- ZREM succeeds pushes, so racing pollers still push each job once. The ZREM is the
-- first write: if a later write fails (WRONGTYPE on queue:<q>) the script has already
-- removed the member, so the queue key's type is checked before it.
if ARGV[2] ~= '' then
  local t = redis.call('TYPE', KEYS[3])['ok']
  if t ~= 'list' and t ~= 'none' then
    return redis.error_reply('WRONGTYPE ' .. KEYS[3] .. ' is a ' .. t .. ', not a list')
  end
end
if redis.call('ZREM', KEYS[1], ARGV[1]) == 0 then return 0 end
if ARGV[2] ~= '' then
  redis.call('SADD', KEYS[2], ARGV[3])
  redis.call('LPUSH', KEYS[3], ARGV[2])
end
return 1
