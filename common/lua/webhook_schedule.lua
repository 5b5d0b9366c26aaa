-- Schedule one webhook event of a job, once: the job's `webhook_sent` field remembers which
-- events were scheduled, so a second scan (or a second API process) never doubles one.
-- KEYS[1] genq:job:{id}; KEYS[2] genq:webhooks:due; KEYS[3] genq:webhook:{delivery id}
-- ARGV[1] event; ARGV[2] delivery id; ARGV[3] due time; ARGV[4] url; ARGV[5] body;
-- ARGV[6] job id; ARGV[7] delivery hash ttl s
-- Returns 1 when scheduled, 0 when already scheduled or the job is gone.
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
local sent = redis.call('HGET', KEYS[1], 'webhook_sent') or ''
if string.find(',' .. sent .. ',', ',' .. ARGV[1] .. ',', 1, true) then return 0 end
if sent == '' then sent = ARGV[1] else sent = sent .. ',' .. ARGV[1] end
redis.call('HSET', KEYS[1], 'webhook_sent', sent)
redis.call('HSET', KEYS[3], 'job', ARGV[6], 'event', ARGV[1], 'url', ARGV[4],
  'body', ARGV[5], 'attempts', 0)
redis.call('EXPIRE', KEYS[3], tonumber(ARGV[7]))
redis.call('ZADD', KEYS[2], ARGV[3], ARGV[2])
return 1
