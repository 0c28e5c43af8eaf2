-- unique_release: free unique locks still held by the jobs that took them
-- (compare-and-delete), so a job that ended cannot free a lock another job took since
-- its own expired.
-- KEYS: the locks (unique:<digest>); ARGV[i]: the jid that must hold KEYS[i]
-- Returns how many locks were freed.
local freed = 0
for i, key in ipairs(KEYS) do
  if redis.call('GET', key) == ARGV[i] then
    freed = freed + redis.call('DEL', key)
  end
end
return freed
