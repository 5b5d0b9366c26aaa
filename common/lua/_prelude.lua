-- Shared by every job script (prepended before loading). Every script gets the same keys:
--   KEYS[1] genq:job:{id}        hash: the record
--   KEYS[2] genq:job:{id}:log    list: replay log (JSON deltas, index == seq)
--   KEYS[3] genq:job:{id}:text   string: output so far
--   KEYS[4] genq:events:{id}     pubsub channel of the job
--   KEYS[5] genq:running         zset: running job ids by claim time
--   KEYS[6] genq:queued          zset: queued job ids by the time they were (re)queued
-- A terminal state never changes: `finish` is only called after the caller checked the
-- current status, and every script refuses to move a terminal job.

local function is_terminal(s)
  return s == 'succeeded' or s == 'failed' or s == 'cancelled' or s == 'expired'
end

-- The end event a job's listeners get. When someone listens (an API process relaying the
-- job's stream), it carries the record without its request and the output text, so the
-- relay sends `done` at once instead of reading the record back first (a round trip per job
-- end, on an API loop that is busiest when many jobs end together):
--   {"end": status, "job": {hash field: value, ...}, "text": output}
-- With no subscriber (a job submitted to be polled) it is only {"end": status}. (NUMSUB
-- counts channel subscribers, which the relay is, not pattern ones.)
local function end_event(k, status)
  local head = '{"end":' .. cjson.encode(status)
  if redis.call('PUBSUB', 'NUMSUB', k[4])[2] == 0 then return head .. '}' end
  local h = redis.call('HGETALL', k[1])
  local job = {}
  for i = 1, #h, 2 do
    if h[i] ~= 'request' then job[h[i]] = h[i + 1] end
  end
  local text = redis.call('GET', k[3]) or ''
  return head .. ',"job":' .. cjson.encode(job) .. ',"text":' .. cjson.encode(text) .. '}'
end

-- Move the job to a terminal status, start its retention clock, tell listeners.
-- A job may carry its own `retention_s` field (JobRequest.retention_s); it wins over ARGV's.
-- `k` holds the job's key names in KEYS' order above (a script that handles many jobs, like
-- append.lua, builds them itself); `finish` is the usual case, the keys of KEYS.
local function finish_at(k, id, status, now, retention, fields)
  retention = redis.call('HGET', k[1], 'retention_s') or retention
  redis.call('HSET', k[1], 'status', status, 'finished_at', now)
  if #fields > 0 then redis.call('HSET', k[1], unpack(fields)) end
  redis.call('EXPIRE', k[1], retention)
  redis.call('EXPIRE', k[2], retention)
  redis.call('EXPIRE', k[3], retention)
  redis.call('ZREM', k[5], id)
  redis.call('ZREM', k[6], id)
  redis.call('PUBLISH', k[4], end_event(k, status))
end

local function finish(id, status, now, retention, fields)
  finish_at(KEYS, id, status, now, retention, fields)
end

-- A job's key names in KEYS' order, for a script that handles many jobs: built from the six
-- key-name parts common/keys.py passes it (keys.JOB_KEY_PARTS) at ARGV[i] .. ARGV[i + 5].
local function job_keys_at(i, id)
  local rec = ARGV[i] .. id
  return {rec, rec .. ARGV[i + 1], rec .. ARGV[i + 2], ARGV[i + 3] .. id, ARGV[i + 4], ARGV[i + 5]}
end

-- A queued job whose queue_ttl_s has passed ends `expired`, never started (claim.lua when a
-- worker meets it, expire.lua for a queue no worker takes from).
local function expire_queued(k, id, now, retention)
  finish_at(k, id, 'expired', now, retention, {'error', cjson.encode(
    {code = 'queue_ttl', message = 'the job waited in the queue longer than its queue_ttl_s'})})
end
