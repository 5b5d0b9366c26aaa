-- Atomic claim by a worker: queued -> running. A duplicate delivery finds the job running
-- or terminal and is dropped (invariant 2).
-- ARGV[1] job id; ARGV[2] worker id; ARGV[3] now; ARGV[4] max attempts; ARGV[5] retention s
-- Returns {'claimed', attempts, field, value, ...} (the claimed record: the worker needs no
--         second round trip to read it) | {'skip', status} | {'expired', ''} | {'exhausted', ''}
--         | {'missing', ''}
local status = redis.call('HGET', KEYS[1], 'status')
if not status then return {'missing', ''} end
if status ~= 'queued' then return {'skip', status} end
local now = tonumber(ARGV[3])
local expires = redis.call('HGET', KEYS[1], 'expires_at')
if expires and expires ~= '' and now > tonumber(expires) then
  finish(ARGV[1], 'expired', ARGV[3], ARGV[5], {'error', cjson.encode(
    {code = 'queue_ttl', message = 'the job waited in the queue longer than its queue_ttl_s'})})
  return {'expired', ''}
end
local attempts = redis.call('HINCRBY', KEYS[1], 'attempts', 1)
if attempts > tonumber(ARGV[4]) then
  finish(ARGV[1], 'failed', ARGV[3], ARGV[5], {'attempts', ARGV[4], 'error', cjson.encode(
    {code = 'attempts_exhausted',
     message = 'the job was started ' .. ARGV[4] .. ' times and its worker died each time'})})
  return {'exhausted', ''}
end
redis.call('HSET', KEYS[1], 'status', 'running', 'started_at', ARGV[3], 'worker', ARGV[2])
redis.call('ZADD', KEYS[5], now, ARGV[1])
redis.call('ZREM', KEYS[6], ARGV[1])
local out = {'claimed', attempts}
for _, v in ipairs(redis.call('HGETALL', KEYS[1])) do out[#out + 1] = v end
return out
