-- fetch: acknowledge finished jobs and take up to N new ones, in one round trip.
-- KEYS: queue:q1, inprogress:q1, queue:q2, inprogress:q2, ... (fetch order)
-- ARGV[1]: max jobs to take; ARGV[2]: number of acks; then per ack: its in-progress
--          key, its raw job.
-- Returns a flat list: the 1-based index of the job's queue in KEYS pairs, the raw job,
-- and so on. Acks first, so one round trip both frees and refills a process's slots;
-- each taken job is in its in-progress list before the reply leaves (at-least-once).
-- If n queues were skipped because their key (or in-progress key) holds another type,
-- the list is led by 0, n, then n pairs (queue index, "<key>: <error>"): the other
-- queues are still served (issue 12). A script's writes are not rolled back when it
-- fails, so a WRONGTYPE must not abort it halfway: pcall, and jobs popped but not
-- stored in in-progress go straight back to the tail they came from.
local want = tonumber(ARGV[1])
local nacks = tonumber(ARGV[2])
for i = 1, nacks do
  redis.pcall('LREM', ARGV[1 + 2 * i], -1, ARGV[2 + 2 * i])
end
local out = {}
if want <= 0 then return out end
local bad = {}
for i = 1, #KEYS, 2 do
  local items = redis.pcall('RPOP', KEYS[i], want)
  if type(items) == 'table' and items.err then
    bad[#bad + 1] = (i + 1) / 2
    bad[#bad + 1] = KEYS[i] .. ': ' .. items.err
  elseif items then
    local pushed = redis.pcall('LPUSH', KEYS[i + 1], unpack(items))
    if type(pushed) == 'table' and pushed.err then
      for j = #items, 1, -1 do redis.call('RPUSH', KEYS[i], items[j]) end
      bad[#bad + 1] = (i + 1) / 2
      bad[#bad + 1] = KEYS[i + 1] .. ': ' .. pushed.err
    else
      for _, item in ipairs(items) do
        out[#out + 1] = (i + 1) / 2
        out[#out + 1] = item
      end
      want = want - #items
      if want <= 0 then break end
    end
  end
end
if #bad == 0 then return out end
local reply = {0, #bad / 2}
for _, v in ipairs(bad) do reply[#reply + 1] = v end
for _, v in ipairs(out) do reply[#reply + 1] = v end
return reply
