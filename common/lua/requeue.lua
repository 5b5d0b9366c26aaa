-- The reaper's move for a running job whose worker is dead (invariant 3): a job that streamed
-- nothing goes back to queued (the caller re-sends it); one that streamed fails `worker_lost`.
-- KEYS[7] genq:requeued: a requeued job stays there until its message is re-sent, so a
-- reaper that dies between this script and the re-send cannot strand it (any reaper re-sends
-- entries that linger; claim.lua drops the duplicates).
-- ARGV[1] job id; ARGV[2] dead worker id; ARGV[3] now; ARGV[4] retention s
-- Returns 'requeued' | 'failed' | 'skip'.
local cur = redis.call('HMGET', KEYS[1], 'status', 'worker')
if cur[1] ~= 'running' or cur[2] ~= ARGV[2] then
  if not cur[1] then redis.call('ZREM', KEYS[5], ARGV[1]) end
  return 'skip'
end
if redis.call('LLEN', KEYS[2]) > 0 then
  finish(ARGV[1], 'failed', ARGV[3], ARGV[4], {'error', cjson.encode(
    {code = 'worker_lost', message = 'the worker died after the job had streamed output'})})
  return 'failed'
end
redis.call('HSET', KEYS[1], 'status', 'queued', 'worker', '')
redis.call('ZREM', KEYS[5], ARGV[1])
redis.call('ZADD', KEYS[6], tonumber(ARGV[3]), ARGV[1])
redis.call('ZADD', KEYS[7], tonumber(ARGV[3]), ARGV[1])
return 'requeued'
