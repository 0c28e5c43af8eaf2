-- batch_update: record one outcome of a batch's job (or the end of a jobs() block) and
-- fire the callbacks it makes due, in one step: the counts and the callback push cannot
-- be split, so each event's callback is pushed exactly once however many processes
-- finish jobs at once. Idempotent per jid: a job re-run after a crash between this
-- script and its ack changes nothing a second time (the jid is no longer pending, or
-- its failure is already counted), and each event is claimed once, by <event>_at.
-- Events (Sidekiq Pro's): complete when every job ran once (pending == failures) and
-- every child batch is complete; success when every job succeeded (pending == 0) and
-- every child batch succeeded; death when a job (or one in a child batch) died. No
-- complete/success while a jobs() block is open; none at all once invalidated. A child's
-- complete/success is counted in its parent here too, walking up to the root.
-- KEYS[1]: b-<bid>. The other keys are built from ARGV[1] as Keys.batch builds them
-- (b-<bid>-jids, -failinfo, -died, -open, -results; b-<parent>...), and callbacks go to
-- queue:<q> and queues: the parent chain is only known here.
-- On a Redis Cluster (ARGV[6] = '1') the names are ClusterKeys.batch's, b-{<root>}<rest>
-- (the root: the bid up to its first '.'), all on the family's slot, and a callback is
-- not pushed but written to the family's outbox, b-{<root>}-outbox (claim
-- c|<bid>|<event> -> '|<queue>|<payload>'), from which kiq.store.cluster_batches
-- delivers it to its queue shard once (the queue is on another slot).
-- ARGV[1]: key prefix; ARGV[2]: op: success | failure | death | close; ARGV[3]: bid;
-- ARGV[4]: the jid (close: the block's token); ARGV[5]: info: the error JSON
-- (failure, death) or the result JSON (success; kept only when keep_results is set);
-- ARGV[6]: '1' on a cluster (optional)
-- Returns the events fired, as "<bid>:<event>" strings; on a cluster followed by the
-- number of entries in the family's outbox (to deliver).
local prefix, op, bid, member, info = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local cluster = ARGV[6] == '1'
local function k(b, part)
  local name = 'b-' .. b
  if cluster then
    local root, rest = string.match(b, '^([^.]*)(.*)$')
    name = 'b-{' .. root .. '}' .. rest
  end
  if part == nil then return prefix .. name end
  return prefix .. name .. '-' .. part
end
local outbox = cluster and k(string.match(bid, '^[^.]*'), 'outbox')
-- One HMGET first: a missing batch answers nil (nothing to count), a key of another
-- type fails here, before any write.
local head = redis.call('HMGET', KEYS[1], 'created_at', 'ttl', 'keep_results')
if not head[1] then return {} end -- expired or never opened: nothing to count
local ttl = tonumber(head[2] or '2592000')
local clock, now -- read once, and only when an event fires
local fired = {}

local function tick()
  if not clock then
    clock = redis.call('TIME')
    now = string.format('%d.%06d', tonumber(clock[1]), tonumber(clock[2]))
  end
end

local function stamp(fmt)
  if fmt == 'ms' then
    return string.format('%d', tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000))
  end
  return now
end

local function fire(b, event)
  local key = k(b)
  if redis.call('HEXISTS', key, event .. '_at') == 1 then return false end
  tick()
  redis.call('HSET', key, event .. '_at', now)
  local cb = redis.call('HMGET', key, 'cb_' .. event, 'cbq_' .. event, 'cbfmt')
  if cb[1] and cb[2] then
    -- the payload was stored without enqueued_at and ends with '}'
    local raw = string.sub(cb[1], 1, -2) .. ',"enqueued_at":' .. stamp(cb[3]) .. '}'
    if cluster then
      redis.call('HSET', outbox, 'c|' .. b .. '|' .. event, '|' .. cb[2] .. '|' .. raw)
      redis.call('EXPIRE', outbox, ttl)
    else
      redis.call('SADD', prefix .. 'queues', cb[2])
      redis.call('LPUSH', prefix .. 'queue:' .. cb[2], raw)
    end
  end
  fired[#fired + 1] = b .. ':' .. event
  return true
end

local function check(b)
  while b and b ~= '' do
    local h = redis.call('HMGET', k(b), 'created_at', 'pending', 'failures', 'kids_pending',
                         'kids_open', 'parent', 'invalidated')
    if not h[1] or h[7] or redis.call('SCARD', k(b, 'open')) > 0 then return end
    local pending, failures = tonumber(h[2] or '0'), tonumber(h[3] or '0')
    local done = pending == failures and tonumber(h[5] or '0') <= 0 and fire(b, 'complete')
    local won = pending == 0 and tonumber(h[4] or '0') <= 0 and fire(b, 'success')
    local parent = h[6]
    if not (done or won) or not parent or parent == '' then return end
    if redis.call('EXISTS', k(parent)) == 0 then return end
    if done then redis.call('HINCRBY', k(parent), 'kids_open', -1) end
    if won then redis.call('HINCRBY', k(parent), 'kids_pending', -1) end
    b = parent
  end
end

local function died(b)
  while b and b ~= '' do
    local h = redis.call('HMGET', k(b), 'created_at', 'parent', 'invalidated')
    if not h[1] or h[3] or not fire(b, 'death') then return end
    b = h[2]
  end
end

if op == 'success' then
  if redis.call('SREM', k(bid, 'jids'), member) == 1 then
    redis.call('HINCRBY', KEYS[1], 'pending', -1)
    if redis.call('HDEL', k(bid, 'failinfo'), member) == 1 then
      redis.call('HINCRBY', KEYS[1], 'failures', -1)
    end
    if info ~= '' and head[3] then
      redis.call('HSET', k(bid, 'results'), member, info)
      redis.call('EXPIRE', k(bid, 'results'), ttl)
    end
  end
elseif op == 'failure' or op == 'death' then
  if redis.call('SISMEMBER', k(bid, 'jids'), member) == 1 then
    if redis.call('HSET', k(bid, 'failinfo'), member, info) == 1 then
      redis.call('HINCRBY', KEYS[1], 'failures', 1)
    end
    redis.call('EXPIRE', k(bid, 'failinfo'), ttl)
    if op == 'death' and redis.call('SADD', k(bid, 'died'), member) == 1 then
      redis.call('HINCRBY', KEYS[1], 'dead', 1)
      redis.call('EXPIRE', k(bid, 'died'), ttl)
      died(bid)
    end
  end
elseif op == 'close' then
  redis.call('SREM', k(bid, 'open'), member)
else
  return redis.error_reply('ERR batch_update: unknown op ' .. op)
end
check(bid)
if cluster then fired[#fired + 1] = redis.call('HLEN', outbox) end
return fired
