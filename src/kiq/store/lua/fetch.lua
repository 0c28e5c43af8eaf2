-- fetch: acknowledge finished jobs and take up to N new ones, in one round trip.
-- KEYS: queue:q1, inprogress:q1, queue:q2, inprogress:q2, ... (fetch order)
-- ARGV[1]: max jobs to take; ARGV[2]: number of acks; then per ack: its in-progress
--          key, its raw job.
-- Returns a flat list: the 1-based index of the job's queue in KEYS pairs, the raw job,
-- and so on. Acks first, so one round trip both frees and refills a process's slots;
-- each taken job is in its in-progress list before the reply leaves (at-least-once).
local want = tonumber(ARGV[1])
local nacks = tonumber(ARGV[2])
for i = 1, nacks do
  redis.call('LREM', ARGV[1 + 2 * i], -1, ARGV[2 + 2 * i])
end
local out = {}
if want <= 0 then return out end
for i = 1, #KEYS, 2 do
  local items = redis.call('RPOP', KEYS[i], want)
  if items then
    redis.call('LPUSH', KEYS[i + 1], unpack(items))
    for _, item in ipairs(items) do
      out[#out + 1] = (i + 1) / 2
      out[#out + 1] = item
    end
    want = want - #items
    if want <= 0 then break end
  end
end
return out
