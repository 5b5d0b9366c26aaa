-- Create a queued job, or return the job an Idempotency-Key already names.
-- KEYS[7] idempotency key (ignored when ARGV[3] == '0'); KEYS[8] owner's job index (zset);
-- KEYS[9] the all-owners job index (zset), for admin listing; KEYS[10] the expiring zset
-- (a job with an expires_at field goes in it, for the API's queue-TTL sweep); KEYS[11]
-- (optional) the model's Celery queue list that ARGV[6] goes on
-- ARGV[1] job id; ARGV[2] body hash; ARGV[3] idempotency ttl (s, '0' = no key);
-- ARGV[4] created_at; ARGV[5] index horizon (entries older are trimmed);
-- ARGV[6] the job's Celery message ('' = the caller sends it); ARGV[7..] field pairs
-- Returns {1, id} when created, {0, existing id, existing body hash} otherwise. Only the
-- call that creates the job enqueues it, in the same step: no record without its message.
if ARGV[3] ~= '0' then
  local existing = redis.call('GET', KEYS[7])
  if existing then
    local sep = string.find(existing, ':', 1, true)
    return {0, string.sub(existing, sep + 1), string.sub(existing, 1, sep - 1)}
  end
  redis.call('SET', KEYS[7], ARGV[2] .. ':' .. ARGV[1], 'EX', tonumber(ARGV[3]))
end
local fields = {}
for i = 7, #ARGV do fields[#fields + 1] = ARGV[i] end
for i = 7, #ARGV - 1, 2 do
  if ARGV[i] == 'expires_at' and ARGV[i + 1] ~= '' then
    redis.call('ZADD', KEYS[10], ARGV[i + 1], ARGV[1])
  end
end
redis.call('HSET', KEYS[1], unpack(fields))
redis.call('ZADD', KEYS[8], ARGV[4], ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[8], '-inf', '(' .. ARGV[5])
redis.call('ZADD', KEYS[6], ARGV[4], ARGV[1])
redis.call('ZADD', KEYS[9], ARGV[4], ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[9], '-inf', '(' .. ARGV[5])
if ARGV[6] ~= '' then
  redis.call('LPUSH', KEYS[11], ARGV[6])
end
return {1, ARGV[1]}
