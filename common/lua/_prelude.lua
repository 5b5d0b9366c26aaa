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
  redis.call('PUBLISH', k[4], cjson.encode({['end'] = status}))
end

local function finish(id, status, now, retention, fields)
  finish_at(KEYS, id, status, now, retention, fields)
end
