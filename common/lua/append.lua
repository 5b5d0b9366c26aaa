-- Append one delta to each of N running jobs (one worker's loop tick): replay log, text,
-- token count, then publish. A job's delta is refused (seq -1) unless that job is running on
-- this worker, so no delta lands after a cancel, a timeout or a reaper's requeue.
-- One call for the whole tick: one round trip and one reply, whatever N (a pipeline of N
-- EVALSHAs cost N command encodings, N replies and an extra SCRIPT EXISTS round trip).
-- KEYS[4i-3 .. 4i] job i's record, replay log, text and events channel (genq:job:{id},
--   genq:job:{id}:log, genq:job:{id}:text, genq:events:{id}), i = 1..N
-- ARGV[1] worker id; ARGV[2] now; then 4 per job: text, new tokens, prompt tokens ('' =
--   unknown), the delta's per-token logprobs as a JSON array ('' = none), spliced in as is:
--   cjson would turn an empty array into {}.
-- Returns the seq of each job's delta, or -1.
local worker, now = ARGV[1], ARGV[2]
local out = {}
for i = 1, #KEYS / 4 do
  local k, a = 4 * (i - 1), 2 + 4 * (i - 1)
  local rec, log, text, chan = KEYS[k + 1], KEYS[k + 2], KEYS[k + 3], KEYS[k + 4]
  local cur = redis.call('HMGET', rec, 'status', 'worker')
  if cur[1] ~= 'running' or cur[2] ~= worker then
    out[i] = -1
  else
    local seq = redis.call('LLEN', log)
    local ev = cjson.encode({seq = seq, text = ARGV[a + 1]})
    if ARGV[a + 4] ~= '' then
      ev = string.sub(ev, 1, -2) .. ',"logprobs":' .. ARGV[a + 4] .. '}'
    end
    redis.call('RPUSH', log, ev)
    redis.call('APPEND', text, ARGV[a + 1])
    redis.call('HINCRBY', rec, 'completion_tokens', tonumber(ARGV[a + 2]))
    if seq == 0 then
      redis.call('HSET', rec, 'first_token_at', now)
      if ARGV[a + 3] ~= '' then redis.call('HSET', rec, 'prompt_tokens', ARGV[a + 3]) end
    end
    redis.call('PUBLISH', chan, ev)
    out[i] = seq
  end
end
return out
