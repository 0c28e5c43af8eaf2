-- batch_open: create a batch, or open an existing one again, for a jobs() block
-- (Sidekiq Pro's Batch#jobs; docs/workflows.md). While any block is open the batch fires
-- no complete/success callback, so jobs that finish before the block ends cannot fire
-- it early. A new batch inside an open block of another becomes its child: the parent
-- counts it (kids, kids_pending, kids_open) in the same step, once (SADD on -kids).
-- KEYS[1]: b-<bid>; KEYS[2]: b-<bid>-open; KEYS[3]: batches (on a Redis Cluster
-- KEYS[1] again: the index is on another slot and its caller writes it, first);
-- KEYS[4]: b-<parent>; KEYS[5]: b-<parent>-kids (both only when ARGV[5] is not '')
-- ARGV[1]: bid; ARGV[2]: the block's token (the running job's jid, or a random one);
-- ARGV[3]: TTL seconds; ARGV[4]: created_at (epoch seconds); ARGV[5]: parent bid or '';
-- ARGV[6..]: field, value pairs written only when the batch is new (description,
-- callbacks, ...)
-- Returns 1 when the batch was created, 0 when it existed. Errors (nothing written):
-- a key of another type; a batch that does not exist (expired) opened without fields;
-- an invalidated batch; a parent that does not exist.
local kind = redis.call('TYPE', KEYS[1]).ok
if kind ~= 'none' and kind ~= 'hash' then
  return redis.error_reply('WRONGTYPE ' .. KEYS[1] .. ' is a ' .. kind .. ', not a batch hash')
end
for _, key in ipairs({KEYS[2], KEYS[5]}) do
  local t = redis.call('TYPE', key).ok
  if t ~= 'none' and t ~= 'set' then
    return redis.error_reply('WRONGTYPE ' .. key .. ' is a ' .. t .. ', not a set')
  end
end
if kind == 'hash' and redis.call('HEXISTS', KEYS[1], 'invalidated') == 1 then
  return redis.error_reply('KIQBATCH batch ' .. ARGV[1] .. ' was invalidated: it takes no jobs')
end
local ttl = tonumber(ARGV[3])
local created = 0
if kind == 'none' then
  if #ARGV < 6 then
    return redis.error_reply('KIQBATCH batch ' .. ARGV[1] .. ' does not exist (expired?)')
  end
  local parent = ARGV[5]
  if parent ~= '' then
    if redis.call('TYPE', KEYS[4]).ok ~= 'hash' then
      return redis.error_reply('KIQBATCH parent batch ' .. parent .. ' does not exist (expired?)')
    end
  end
  local fields = {'created_at', ARGV[4], 'total', 0, 'pending', 0, 'failures', 0, 'dead', 0,
                  'kids', 0, 'kids_pending', 0, 'kids_open', 0, 'parent', parent, 'ttl', ttl}
  for i = 6, #ARGV do fields[#fields + 1] = ARGV[i] end
  redis.call('HSET', KEYS[1], unpack(fields))
  if KEYS[3] ~= KEYS[1] then redis.call('ZADD', KEYS[3], ARGV[4], ARGV[1]) end
  if parent ~= '' and redis.call('SADD', KEYS[5], ARGV[1]) == 1 then
    redis.call('HINCRBY', KEYS[4], 'kids', 1)
    redis.call('HINCRBY', KEYS[4], 'kids_pending', 1)
    redis.call('HINCRBY', KEYS[4], 'kids_open', 1)
    redis.call('EXPIRE', KEYS[5], ttl)
  end
  created = 1
end
redis.call('SADD', KEYS[2], ARGV[2])
redis.call('EXPIRE', KEYS[1], ttl)
redis.call('EXPIRE', KEYS[2], ttl)
return created
