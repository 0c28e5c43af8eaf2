-- kill: move jobs from schedule or retry into dead, in one step.
-- KEYS[1]: schedule or retry; KEYS[2]: dead
-- ARGV[1]: the member to move ("" = the ARGV[2] lowest-scored members)
-- ARGV[2]: how many lowest-scored members (when ARGV[1] is "")
-- ARGV[3]: now, their score in dead
-- ARGV[4]: trim: drop dead members scored at or below this ("" = no trim)
-- ARGV[5]: with a trim, dead members kept at most
-- Returns the members moved: none if ARGV[1] was no longer in KEYS[1] (another caller
-- moved it), so a job is never in both sets, nor in neither. dead's type is checked
-- before the first write (ZREM/ZPOPMIN): a script keeps the writes it made before an
-- error, and a job removed but not added would be lost.
local t = redis.call('TYPE', KEYS[2])['ok']
if t ~= 'zset' and t ~= 'none' then
  return redis.error_reply('WRONGTYPE ' .. KEYS[2] .. ' is a ' .. t .. ', not a zset')
end
local moved = {}
if ARGV[1] ~= '' then
  if redis.call('ZREM', KEYS[1], ARGV[1]) == 0 then return moved end
  moved[1] = ARGV[1]
else
  local popped = redis.call('ZPOPMIN', KEYS[1], ARGV[2])
  for i = 1, #popped, 2 do moved[#moved + 1] = popped[i] end
end
for _, member in ipairs(moved) do redis.call('ZADD', KEYS[2], ARGV[3], member) end
if ARGV[4] ~= '' then
  redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', ARGV[4])
  redis.call('ZREMRANGEBYRANK', KEYS[2], 0, -(tonumber(ARGV[5]) + 1))
end
return moved
