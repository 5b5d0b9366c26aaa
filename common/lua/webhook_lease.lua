-- Take a due webhook delivery for one attempt: push its score to the lease end, so no other
-- dispatcher sends it meanwhile; a dispatcher that dies lets the lease lapse (redelivery).
-- KEYS[1] genq:webhooks:due; ARGV[1] delivery id; ARGV[2] now; ARGV[3] lease end
-- Returns 1 when taken, 0 when not due or gone.
local due = redis.call('ZSCORE', KEYS[1], ARGV[1])
if not due or tonumber(due) > tonumber(ARGV[2]) then return 0 end
redis.call('ZADD', KEYS[1], ARGV[3], ARGV[1])
return 1
