-- Expire the queued jobs whose queue_ttl_s has passed, without waiting for a worker to take
-- them (claim.lua checks it too): a job submitted while no worker consumes its model's queue
-- ends `expired` at its deadline instead of reading `queued` for as long as the queue sits.
-- Its Celery message stays in the queue; the claim that eventually meets it drops it.
-- KEYS[1] the expiring zset (job ids by expires_at).
-- ARGV[1] now; ARGV[2] retention s; ARGV[3] most jobs per call; ARGV[4] job key prefix;
-- ARGV[5] log key suffix; ARGV[6] text key suffix; ARGV[7] events channel prefix;
-- ARGV[8] the running zset; ARGV[9] the queued zset.
-- Every entry due is removed; a job no longer queued (claimed, cancelled, gone) is left as
-- it is (a requeued one is checked again at its next claim). Returns the ids expired.
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[3]))
local out = {}
for _, id in ipairs(due) do
  redis.call('ZREM', KEYS[1], id)
  local rec = ARGV[4] .. id
  if redis.call('HGET', rec, 'status') == 'queued' then
    finish_at({rec, rec .. ARGV[5], rec .. ARGV[6], ARGV[7] .. id, ARGV[8], ARGV[9]},
      id, 'expired', ARGV[1], ARGV[2], {'error', cjson.encode(
        {code = 'queue_ttl', message = 'the job waited in the queue longer than its queue_ttl_s'})})
    out[#out + 1] = id
  end
end
return out
