-- Append one delta to each of N running jobs (one worker's loop tick): replay log, text,
-- token count, then publish. A job's delta is refused (seq -1) unless that job is running on
-- this worker, so no delta lands after a cancel, a timeout or a reaper's requeue.
-- One call for the whole tick, and its deltas in ONE argument: a pipeline of N EVALSHAs cost
-- N command encodings, N replies and a SCRIPT EXISTS round trip, and even one EVALSHA with
-- 4 keys + 4 args per job spent most of its time in redis-py packing ~2,000 arguments (seen in
-- a profile of a GPU worker at 256 jobs). Key names are built here from the prefixes that
-- common/keys.py passes in (genq runs on a single Redis, not Redis Cluster).
-- ARGV[1] worker id; ARGV[2] now; ARGV[3..8] the job key-name parts (keys.JOB_KEY_PARTS:
-- ARGV[3] job key prefix, [4] log key suffix, [5] text key suffix, [6] events channel
-- prefix, [7] the running zset, [8] the queued zset);
-- ARGV[9] JSON array of deltas [job id, text, new tokens, prompt tokens ('' = unknown),
--   the delta's per-token logprobs as a JSON array string ('' = none), the seq the writer
--   expects this delta to get ('' = append wherever)]; the logprobs string is spliced in as
--   is: cjson would turn an empty array into {}.
-- The expected seq makes a retried call idempotent: when Redis ran the call but the reply was
-- lost (a restart, a dropped connection), the writer sends the same deltas again, and a log
-- already longer than the expected seq means this delta landed: it is skipped and its seq
-- returned, not appended twice. A log shorter than expected (Redis lost its tail) is appended
-- to at its end, so seqs stay gap-free.
-- An entry may also end its job (its 7th element: '' or [status, field, value, ...]): after
-- its delta, the job is finished as finish.lua would (ARGV[10] retention s), so the end
-- event follows the last delta in the same call. An entry with no text, tokens or logprobs only finishes. A retried finish of a
-- job this worker already finished with that status counts as done.
-- Returns, per entry, the seq of its delta (-1: refused; -2: no delta); for an entry that
-- finishes, {seq, 'ok' | current status}.
local worker, now = ARGV[1], ARGV[2]
local out = {}
for i, d in ipairs(cjson.decode(ARGV[9])) do
  local id, text, lp, want, fin = d[1], d[2], d[5], d[6], d[7]
  local rec = ARGV[3] .. id
  local log = rec .. ARGV[4]
  local cur = redis.call('HMGET', rec, 'status', 'worker')
  local seq = -2
  if fin ~= '' and cur[1] == fin[1] and cur[2] == worker then
    -- written and finished by an earlier try of this call whose reply was lost
    out[i] = {want ~= '' and want or -2, 'ok'}
  elseif cur[1] ~= 'running' or cur[2] ~= worker then
    out[i] = fin ~= '' and {-1, cur[1] or 'missing'} or -1
  else
    if text ~= '' or d[3] ~= 0 or lp ~= '' then
      seq = redis.call('LLEN', log)
      if want ~= '' and seq > want then
        seq = want  -- written by an earlier try of this call whose reply was lost
      else
        local ev = cjson.encode({seq = seq, text = text})
        if lp ~= '' then
          ev = string.sub(ev, 1, -2) .. ',"logprobs":' .. lp .. '}'
        end
        redis.call('RPUSH', log, ev)
        redis.call('APPEND', rec .. ARGV[5], text)
        redis.call('HINCRBY', rec, 'completion_tokens', d[3])
        if seq == 0 then
          redis.call('HSET', rec, 'first_token_at', now)
          if d[4] ~= '' then redis.call('HSET', rec, 'prompt_tokens', d[4]) end
        end
        redis.call('PUBLISH', ARGV[6] .. id, ev)
      end
    end
    if fin ~= '' then
      local fields = {}
      for j = 2, #fin do fields[#fields + 1] = fin[j] end
      finish_at(job_keys_at(3, id), id, fin[1], now, ARGV[10], fields)
      out[i] = {seq, 'ok'}
    else
      out[i] = seq
    end
  end
end
return out
