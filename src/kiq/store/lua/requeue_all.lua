-- requeue_all: move everything in one in-progress list back to its queue.
-- KEYS[1]: kiq|inprogress|<identity>|<queue>; KEYS[2]: queue:<queue>
-- ARGV: none.
-- Returns how many were moved. Newest first onto the tail, so the oldest unfinished
-- job ends up at the tail and is fetched next (Sidekiq: RPUSH).
local n = 0
while redis.call('LMOVE', KEYS[1], KEYS[2], 'LEFT', 'RIGHT') do n = n + 1 end
return n
