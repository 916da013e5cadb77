-- Shared helpers: dead letters.
-- A part of every script's prelude, after the parts `scripts.rs` lists before it (the key
-- layout and the call set-up are in `base.lua`).

-- Dead letters -----------------------------------------------------------------------------

-- Drops the dead letters whose retention is over, a few at a time.
local function prune_letters(now)
  local old = rcall('ZRANGEBYSCORE', LETTER_INDEX, '-inf', text(now - LETTER_RETENTION), 'LIMIT', '0', '16')
  if #old > 0 then
    rcall('ZREM', LETTER_INDEX, unpack(old))
    local fields = {}
    for _, e in ipairs(old) do
      fields[#fields + 1] = e
      fields[#fields + 1] = e .. ':p'
    end
    rcall('HDEL', LETTERS, unpack(fields))
  end
end

-- Moves item `id` (state `m`, bytes `payload`) of `run` to the dead letters with `err`: the
-- letter (JSON) under its entry, the item's bytes under `<entry>:p`. The caller updates the
-- run (outstanding count, status).
local function dead_letter(run, id, m, payload, err, now)
  local e = entry(id, run)
  rcall('HSET', items_key(run), id .. ':m', with_state(m, 'F'))
  rcall('HDEL', items_key(run), id)
  rcall('HSET', LETTERS, e, cjson.encode({
    run_id = run, item_id = id, node = m.n, error = err, deliveries = m.d, attempt = m.a,
    at = now,
  }), e .. ':p', payload or '')
  rcall('ZADD', LETTER_INDEX, text(now), e)
  rcall('SADD', letters_of_key(run), id)
  prune_letters(now)
  -- The letters are pruned as new ones come; with none coming, the whole set expires with
  -- its newest letter, so no letter outlives its retention by more than the gap between it
  -- and the newest (and the listing hides those past it).
  local until_ms = text(now + LETTER_RETENTION)
  rcall('PEXPIREAT', LETTERS, until_ms)
  rcall('PEXPIREAT', LETTER_INDEX, until_ms)
end

-- Records a failure of item `id` of `run` in the run's error list (a `WorkflowError`).
local function record_error(run, id, node, err, attempt, now)
  rcall('RPUSH', errs_key(run), cjson.encode({
    work_item = id, node = node, error = err, attempt = attempt, handled = false,
    timestamp = { secs_since_epoch = floor(now / 1000), nanos_since_epoch = (now % 1000) * 1000000 },
  }))
end
