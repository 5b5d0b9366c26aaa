-- Collect one finished job into its batch, exactly once: the line's bit in the `done` bitmap
-- guards the output/error append and the count, so a pass repeated after a crash (or a job
-- fanned out again after an API restart) is never counted twice.
-- KEYS[1] genq:batch:{id}; KEYS[2] genq:batch:{id}:done; KEYS[3] genq:batch:{id}:output;
-- KEYS[4] genq:batch:{id}:errors; KEYS[5] genq:batch:{id}:pending
-- ARGV[1] job id; ARGV[2] input line index; ARGV[3] '1' succeeded | '0' failed; ARGV[4] line
-- Returns 1 when collected now, 0 when it had been already.
redis.call('SREM', KEYS[5], ARGV[1])
if redis.call('GETBIT', KEYS[2], tonumber(ARGV[2])) == 1 then return 0 end
redis.call('SETBIT', KEYS[2], tonumber(ARGV[2]), 1)
if ARGV[3] == '1' then
  redis.call('RPUSH', KEYS[3], ARGV[4])
  redis.call('HINCRBY', KEYS[1], 'completed', 1)
else
  redis.call('RPUSH', KEYS[4], ARGV[4])
  redis.call('HINCRBY', KEYS[1], 'failed', 1)
end
return 1
