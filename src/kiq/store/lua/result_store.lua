-- result_store: store a job's final record, wake its waiters and count it, in one step
-- (docs/results.md), so a waiter that read "not there yet" after subscribing always
-- gets the PUBLISH, and the count never drifts from the records written.
-- KEYS[1]: kiq|result|<jid> (STRING, overwritten whatever it held)
-- KEYS[2]: kiq|results (HASH status -> count)
-- ARGV[1]: the record (JSON); ARGV[2]: TTL in seconds; ARGV[3]: the pub/sub channel
-- (kiq|result-ready|<jid>); ARGV[4]: the status counted (a field of KEYS[2])
-- Returns the number of waiting subscribers the PUBLISH reached.
-- The counter's type is checked before the first write: a wrong-typed counter is left
-- alone (the record matters more than its count), never half-written.
local kind = redis.call('TYPE', KEYS[2]).ok
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
if kind == 'hash' or kind == 'none' then
  redis.call('HINCRBY', KEYS[2], ARGV[4], 1)
end
return redis.call('PUBLISH', ARGV[3], ARGV[1])
