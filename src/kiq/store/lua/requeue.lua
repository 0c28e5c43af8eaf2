-- requeue: put unfinished jobs of a process back at the tail of their queue.
-- KEYS[1]: kiq|inprogress|<identity>|<queue>; KEYS[2]: queue:<queue>
-- ARGV: the raw jobs, oldest first.
-- Returns how many were moved. Only a job still in the in-progress list moves (LREM
-- first), so a job acknowledged meanwhile is not run again; pushed newest first, so
-- the oldest ends at the tail and is fetched next.
local n = 0
for i = #ARGV, 1, -1 do
  if redis.call('LREM', KEYS[1], -1, ARGV[i]) > 0 then
    redis.call('RPUSH', KEYS[2], ARGV[i])
    n = n + 1
  end
end
return n
