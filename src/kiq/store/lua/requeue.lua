-- requeue: put unfinished jobs of a process back at the tail of their queue.
-- KEYS[1]: kiq|inprogress|<identity>|<queue>; KEYS[2]: queue:<queue>;
-- KEYS[3]: kiq|ahead|<identity> (the ahead marks, fetch.lua)
-- ARGV: the raw jobs, oldest first.
-- Returns how many were moved. Only a job still in the in-progress list moves (LREM
-- first), so a job acknowledged meanwhile is not run again; pushed newest first, so
-- the oldest ends at the tail and is fetched next. A moved job's ahead mark goes too
-- (pcall: a foreign key of another type there must not stop the put-back).
local n = 0
for i = #ARGV, 1, -1 do
  if redis.call('LREM', KEYS[1], -1, ARGV[i]) > 0 then
    redis.call('RPUSH', KEYS[2], ARGV[i])
    redis.pcall('SREM', KEYS[3], ARGV[i])
    n = n + 1
  end
end
return n
