-- Atomic claim by a worker of one or more jobs: queued -> running. A duplicate delivery
-- finds its job running or terminal and is dropped (invariant 2).
-- A worker claims every job that reached it in one loop tick in ONE call: jobs of equal
-- length end together and their successors arrive together, and a wave of N claims was N
-- script calls (N encodes, N replies, N wakes) on the engine's busy loop. Key names are
-- built here from the prefixes common/keys.py passes in (a single Redis, as append.lua).
-- ARGV[1] worker id; ARGV[2] now; ARGV[3] max attempts; ARGV[4] retention s;
-- ARGV[5..10] the job key-name parts (keys.JOB_KEY_PARTS: job key prefix, log and text key
-- suffixes, events channel prefix, the running and queued zsets); ARGV[11..] the job ids.
-- Returns, per job, {'claimed', attempts, field, value, ...} (the claimed record: the worker
-- needs no second round trip to read it) | {'skip', status} | {'expired', ''}
-- | {'exhausted', ''} | {'missing', ''}
local worker, now_s, max_attempts, retention = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local now = tonumber(now_s)

local function claim_one(id)
  local k = job_keys_at(5, id)
  local rec = k[1]
  local status = redis.call('HGET', rec, 'status')
  if not status then return {'missing', ''} end
  if status ~= 'queued' then return {'skip', status} end
  local expires = redis.call('HGET', rec, 'expires_at')
  if expires and expires ~= '' and now > tonumber(expires) then
    expire_queued(k, id, now_s, retention)
    return {'expired', ''}
  end
  local attempts = redis.call('HINCRBY', rec, 'attempts', 1)
  if attempts > tonumber(max_attempts) then
    finish_at(k, id, 'failed', now_s, retention, {'attempts', max_attempts, 'error',
      cjson.encode({code = 'attempts_exhausted',
        message = 'the job was started ' .. max_attempts .. ' times and its worker died each time'})})
    return {'exhausted', ''}
  end
  redis.call('HSET', rec, 'status', 'running', 'started_at', now_s, 'worker', worker)
  redis.call('ZADD', k[5], now, id)
  redis.call('ZREM', k[6], id)
  local out = {'claimed', attempts}
  for _, v in ipairs(redis.call('HGETALL', rec)) do out[#out + 1] = v end
  return out
end

local out = {}
for i = 11, #ARGV do out[#out + 1] = claim_one(ARGV[i]) end
return out
