-- cluster_batch_add: the batch-slot half of a batch push or a workflow step's launch on
-- a Redis Cluster (kiq.store.cluster_batches): count the jobs as pending members and
-- write each to the family's outbox, in one step on the batch's slot. Their queues are
-- on other slots: the caller then delivers the outbox (cluster_batch_deliver.lua) and
-- deletes what it delivered. Membership comes first, so no job ever runs before it is
-- counted (its outcome would be dropped: batch_update.lua counts pending members only),
-- and every registered job stays in the outbox until it is pushed.
-- The caller has first stamped the family in the sweep's index (kiq|batch-outboxes on
-- the global slot, score = ARGV[4]); a sweep that found the outbox empty and is removing
-- that entry has sealed the family with the score it removes (KEYS[4]). A stamp at or
-- below the seal may already be unindexed: nothing is written, and the caller stamps
-- again and retries, so every job this writes is in an outbox the index names.
-- KEYS[1]: b-{<root>}<rest>; KEYS[2]: its -jids set; KEYS[3]: the family's outbox;
-- KEYS[4]: the family's outbox seal (STRING, a score)
-- ARGV[1]: mode: push (the batch must exist, not invalidated) | launch (create the
-- batch with these jobs unless it exists: then write nothing); ARGV[2]: TTL seconds;
-- ARGV[3]: created_at (launch); ARGV[4]: the caller's index stamp; ARGV[5]: n,
-- field/value pairs that follow (launch: the batch's fields; push: 0); then 4 per job:
-- jid, queue name, at ('' = now; else the schedule score), the encoded payload.
-- Returns {jobs newly counted (launch: -1 when the batch existed and nothing was
-- written), entries in the outbox now (when only this call's: the caller delivers them
-- without reading the outbox back)}, or {-2, the seal} (nothing written: stamp again
-- above the seal). Outbox entries: 'j|<jid>' -> '<at>|<queue>|<payload>'.
-- Errors (nothing written): push to a batch that does not exist or was invalidated; a
-- key of another type.
local mode, ttl = ARGV[1], tonumber(ARGV[2])
local seal_type = redis.call('TYPE', KEYS[4]).ok
if seal_type ~= 'none' and seal_type ~= 'string' then
  return redis.error_reply('WRONGTYPE ' .. KEYS[4] .. ' is a ' .. seal_type .. ', not a string')
end
local seal = redis.call('GET', KEYS[4])
if seal and tonumber(seal) >= tonumber(ARGV[4]) then return {-2, seal} end
local kind = redis.call('TYPE', KEYS[1]).ok
if mode == 'launch' and kind == 'hash' then return {-1, redis.call('HLEN', KEYS[3])} end
if mode == 'push' and kind == 'none' then
  return redis.error_reply('KIQBATCH ' .. KEYS[1] .. ' does not exist (expired, or never opened)')
end
if kind ~= 'none' and kind ~= 'hash' then
  return redis.error_reply('WRONGTYPE ' .. KEYS[1] .. ' is a ' .. kind .. ', not a batch hash')
end
if mode == 'push' and redis.call('HEXISTS', KEYS[1], 'invalidated') == 1 then
  return redis.error_reply('KIQBATCH ' .. KEYS[1] .. ' was invalidated: it takes no jobs')
end
for i, want in ipairs({'set', 'hash'}) do
  local t = redis.call('TYPE', KEYS[i + 1]).ok
  if t ~= 'none' and t ~= want then
    return redis.error_reply('WRONGTYPE ' .. KEYS[i + 1] .. ' is a ' .. t .. ', not a ' .. want)
  end
end
local nfields = tonumber(ARGV[5])
local first = 6 + 2 * nfields
local jobs = (#ARGV - first + 1) / 4
if mode == 'launch' then
  local fields = {'created_at', ARGV[3], 'total', 0, 'pending', 0, 'failures', 0,
                  'dead', 0, 'kids', 0, 'kids_pending', 0, 'kids_open', 0, 'parent', '', 'ttl', ttl}
  for i = 6, first - 1 do fields[#fields + 1] = ARGV[i] end
  redis.call('HSET', KEYS[1], unpack(fields))
end
local added = 0
for i = 0, jobs - 1 do
  local a = first + i * 4
  added = added + redis.call('SADD', KEYS[2], ARGV[a])
  redis.call('HSET', KEYS[3], 'j|' .. ARGV[a], ARGV[a + 2] .. '|' .. ARGV[a + 1] .. '|' .. ARGV[a + 3])
end
if added > 0 then
  redis.call('HINCRBY', KEYS[1], 'total', added)
  redis.call('HINCRBY', KEYS[1], 'pending', added)
end
redis.call('EXPIRE', KEYS[1], ttl)
redis.call('EXPIRE', KEYS[2], ttl)
if jobs > 0 then redis.call('EXPIRE', KEYS[3], ttl) end
return {added, redis.call('HLEN', KEYS[3])}
