-- Fold one batch of pre-aggregated events into aggregation tiles, per key (store/online/tile_layout.py has
-- the layout, store/online/tiles.py the argument protocol). Redis 6.2-compatible (EVALSHA, struct, PXAT).
--
-- KEYS, per key of the batch: its state (a string of doubles), its LAST state (a string), its message-id
-- buckets.
-- ARGV: the layout (ring count, per ring: offset, slots, stride, column ops; LAST count,
--       per LAST: how many tiles it keeps), the empty state, then per key: bucket count; per bucket: its
--       expiry (Unix ms), id count and the ids; the state's keep (ms after its newest event; 0: never
--       expires); the newest event time of the batch (µs); the packed deltas (per delta: ring number, then
--       the ring's columns as little-endian doubles); the packed LAST deltas (per delta: feature number as
--       one byte, then the entry as the LAST state stores it).
-- A key whose batch holds a message id already applied changes nothing (its new ids are taken back) and is
-- returned with those ids, so the caller folds it again without them: a redelivery is never counted twice.
-- Returns a flat list: key number (1-based), duplicate count, the duplicate ids; ... (empty: all applied).
local ring_count = tonumber(ARGV[1])
local rings, p = {}, 2
for r = 1, ring_count do
  local stride = tonumber(ARGV[p + 2])
  rings[r] = { offset = tonumber(ARGV[p]), n = tonumber(ARGV[p + 1]), stride = stride, ops = ARGV[p + 3],
               fmt = '<' .. string.rep('d', stride) }
  p = p + 4
end
local last_count, keeps = tonumber(ARGV[p]), {}
for j = 1, last_count do keeps[j] = tonumber(ARGV[p + j]) end
p = p + 1 + last_count
local empty = ARGV[p]
p = p + 1
local last_empty = string.rep('\0', 4 * last_count)
local conflicts, k, key_number = {}, 1, 0

-- A delta of the slot's own tile is merged in; one of a newer tile replaces an older tile no window reads
-- any more; one older than the slot's tile is older than the ring holds: no window reads it any more.
local function merge(slot, delta, ops)
  for c = 2, #delta do
    local op = string.byte(ops, c)
    if op == 97 then slot[c] = slot[c] + delta[c]        -- 'a': add
    elseif op == 109 then                                 -- 'm': min
      if delta[c] < slot[c] then slot[c] = delta[c] end
    elseif op == 77 then                                  -- 'M': max
      if delta[c] > slot[c] then slot[c] = delta[c] end
    end
  end
  return slot
end

-- LAST: per feature, `<u32 length>` and its entries, newest tile first, each `<double tile><u32 size>` and
-- `order .. '\0' .. value`; a tile older than all `keep` entries can never be a window's newest one.
-- The state is edited as a string: unpacking it into tables cost several times more.
local function put_last(state, j, tile, order, entry, keep)
  local pos = 1
  for _ = 1, j - 1 do pos = pos + 4 + struct.unpack('<I4', state, pos) end
  local first = pos + 4
  local stop = first + struct.unpack('<I4', state, pos)
  local at, newer = first, 0
  while at < stop do
    local held_tile, size = struct.unpack('<dI4', state, at)
    if held_tile == tile then
      if order <= string.sub(state, at + 12, string.find(state, '\0', at + 12, true) - 1) then return state end
      local body = string.sub(state, first, at - 1) .. entry .. string.sub(state, at + 12 + size, stop - 1)
      return string.sub(state, 1, pos - 1) .. struct.pack('<I4', #body) .. body .. string.sub(state, stop)
    elseif held_tile < tile then
      break
    end
    newer = newer + 1
    if newer >= keep then return state end
    at = at + 12 + size
  end
  local tail, kept = at, newer + 1
  while tail < stop and kept < keep do
    local _, size = struct.unpack('<dI4', state, tail)
    tail, kept = tail + 12 + size, kept + 1
  end
  local body = string.sub(state, first, at - 1) .. entry .. string.sub(state, at, tail - 1)
  return string.sub(state, 1, pos - 1) .. struct.pack('<I4', #body) .. body .. string.sub(state, stop)
end

while k <= #KEYS do
  key_number = key_number + 1
  local blob_key, last_key = KEYS[k], KEYS[k + 1]
  local bucket_count = tonumber(ARGV[p])
  p = p + 1
  local added, duplicates, expiries = {}, {}, {}
  for b = 1, bucket_count do
    local bucket = KEYS[k + 1 + b]
    local id_count = tonumber(ARGV[p + 1])
    expiries[b] = { bucket, ARGV[p] }
    p = p + 2
    for _ = 1, id_count do
      local id = ARGV[p]
      p = p + 1
      if redis.call('SADD', bucket, id) == 1 then added[#added + 1] = { bucket, id }
      else duplicates[#duplicates + 1] = id end
    end
  end
  k = k + 2 + bucket_count
  local keep_ms, newest, deltas, last_deltas = tonumber(ARGV[p]), tonumber(ARGV[p + 1]), ARGV[p + 2], ARGV[p + 3]
  p = p + 4
  if #duplicates > 0 then
    for _, a in ipairs(added) do redis.call('SREM', a[1], a[2]) end
    conflicts[#conflicts + 1] = key_number
    conflicts[#conflicts + 1] = #duplicates
    for _, id in ipairs(duplicates) do conflicts[#conflicts + 1] = id end
  else
    for _, e in ipairs(expiries) do redis.call('PEXPIREAT', e[1], e[2]) end
    -- slot by slot (GETRANGE/SETRANGE): moving the whole state in and out of Lua costs ~1 ns per byte
    local header = redis.call('GETRANGE', blob_key, 0, 7)
    local held_newest
    if #header < 8 then
      redis.call('SET', blob_key, empty)
      held_newest = -math.huge
    else
      held_newest = struct.unpack('<d', header)
    end
    local pos = 1
    while pos <= #deltas do
      local ring = rings[struct.unpack('<d', deltas, pos)]
      local delta = { struct.unpack(ring.fmt, deltas, pos + 8) }
      pos = table.remove(delta)
      local offset = (ring.offset + (delta[1] % ring.n) * ring.stride) * 8
      local held = { struct.unpack(ring.fmt, redis.call('GETRANGE', blob_key, offset, offset + ring.stride * 8 - 1)) }
      table.remove(held)
      if held[1] <= delta[1] then
        local merged = held[1] == delta[1] and merge(held, delta, ring.ops) or delta
        redis.call('SETRANGE', blob_key, offset, struct.pack(ring.fmt, unpack(merged)))
      end
    end
    local expire_at = string.format('%.0f', math.floor(math.max(newest, held_newest) / 1000) + keep_ms)
    if newest > held_newest then
      redis.call('SETRANGE', blob_key, 0, struct.pack('<d', newest))
      if keep_ms > 0 then redis.call('PEXPIREAT', blob_key, expire_at) end
    end
    if #last_deltas > 0 then
      local state = redis.call('GET', last_key)
      if not state or #state < 4 * last_count then state = last_empty end
      local at = 1
      while at <= #last_deltas do
        local j = string.byte(last_deltas, at)
        local tile, size = struct.unpack('<dI4', last_deltas, at + 1)
        local order = string.sub(last_deltas, at + 13, string.find(last_deltas, '\0', at + 13, true) - 1)
        state = put_last(state, j, tile, order, string.sub(last_deltas, at + 1, at + 12 + size), keeps[j])
        at = at + 13 + size
      end
      if keep_ms > 0 then
        redis.call('SET', last_key, state, 'PXAT', expire_at)
      else
        redis.call('SET', last_key, state)
      end
    end
  end
end
return conflicts
