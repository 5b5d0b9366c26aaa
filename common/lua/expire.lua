-- Expire the queued jobs whose queue_ttl_s has passed, without waiting for a worker to take
-- them (claim.lua checks it too): a job submitted while no worker consumes its model's queue
-- ends `expired` at its deadline instead of reading `queued` for as long as the queue sits.
-- Its Celery message stays in the queue; the claim that eventually meets it drops it.
-- KEYS[1] the expiring zset (job ids by expires_at).
-- ARGV[1] now; ARGV[2] retention s; ARGV[3] most jobs per call; ARGV[4..9] the job key-name
-- parts (keys.JOB_KEY_PARTS).
-- Every entry due is removed; a job no longer queued (claimed, cancelled, gone) is left as
-- it is (a requeued one is checked again at its next claim). Returns the ids expired.
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[3]))
local out = {}
for _, id in ipairs(due) do
  redis.call('ZREM', KEYS[1], id)
  local k = job_keys_at(4, id)
  if redis.call('HGET', k[1], 'status') == 'queued' then
    expire_queued(k, id, ARGV[1], ARGV[2])
    out[#out + 1] = id
  end
end
return out
