-- Record one delivery attempt on the job (field webhook_deliveries, a JSON list) and either
-- retire the delivery (delivered, or out of attempts) or schedule its next attempt.
-- KEYS[1] genq:job:{id}; KEYS[2] genq:webhooks:due; KEYS[3] genq:webhook:{delivery id}
-- ARGV[1] delivery id; ARGV[2] attempt as JSON; ARGV[3] next attempt time ('' = retire)
if redis.call('EXISTS', KEYS[1]) == 1 then
  local cur = redis.call('HGET', KEYS[1], 'webhook_deliveries')
  local list = {}
  if cur then list = cjson.decode(cur) end
  list[#list + 1] = cjson.decode(ARGV[2])
  redis.call('HSET', KEYS[1], 'webhook_deliveries', cjson.encode(list))
end
if ARGV[3] == '' then
  redis.call('ZREM', KEYS[2], ARGV[1])
  redis.call('DEL', KEYS[3])
else
  redis.call('HINCRBY', KEYS[3], 'attempts', 1)
  redis.call('ZADD', KEYS[2], ARGV[3], ARGV[1])
end
return 1
