-- Append one delta to a running job: replay log, text, token count, then publish.
-- Refused (returns -1) unless the job is running on this worker, so no delta lands after a
-- cancel, a timeout or a reaper's requeue.
-- ARGV[1] job id; ARGV[2] worker id; ARGV[3] now; ARGV[4] text; ARGV[5] new tokens;
-- ARGV[6] prompt tokens ('' = unknown); ARGV[7] the delta's per-token logprobs as a JSON
-- array ('' or absent = none), spliced in as is: cjson would turn an empty array into {}.
-- Returns the delta's seq, or -1.
local cur = redis.call('HMGET', KEYS[1], 'status', 'worker')
if cur[1] ~= 'running' or cur[2] ~= ARGV[2] then return -1 end
local seq = redis.call('LLEN', KEYS[2])
local ev = cjson.encode({seq = seq, text = ARGV[4]})
if ARGV[7] and ARGV[7] ~= '' then
  ev = string.sub(ev, 1, -2) .. ',"logprobs":' .. ARGV[7] .. '}'
end
redis.call('RPUSH', KEYS[2], ev)
redis.call('APPEND', KEYS[3], ARGV[4])
redis.call('HINCRBY', KEYS[1], 'completion_tokens', tonumber(ARGV[5]))
if seq == 0 then
  redis.call('HSET', KEYS[1], 'first_token_at', ARGV[3])
  if ARGV[6] ~= '' then redis.call('HSET', KEYS[1], 'prompt_tokens', ARGV[6]) end
end
redis.call('PUBLISH', KEYS[4], ev)
return seq
