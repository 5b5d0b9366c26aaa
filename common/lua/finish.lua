-- Move a job to a terminal status if it is in one of the allowed states.
-- ARGV[1] job id; ARGV[2] status; ARGV[3] now; ARGV[4] retention s;
-- ARGV[5] allowed current states, comma separated; ARGV[6] worker id that must hold the job
-- ('' = anyone, e.g. a cancel); ARGV[7..] field pairs to set
-- Returns {'ok', new status} or {'no', current status}.
local cur = redis.call('HMGET', KEYS[1], 'status', 'worker')
if not cur[1] then return {'no', 'missing'} end
if not string.find(',' .. ARGV[5] .. ',', ',' .. cur[1] .. ',', 1, true) then
  return {'no', cur[1]}
end
if ARGV[6] ~= '' and cur[2] ~= ARGV[6] then return {'no', cur[1]} end
local fields = {}
for i = 7, #ARGV do fields[#fields + 1] = ARGV[i] end
finish(ARGV[1], ARGV[2], ARGV[3], ARGV[4], fields)
return {'ok', ARGV[2]}
