-- Fold one batch of pre-aggregated events into aggregation tiles, per key (store/online/tile_layout.py has
-- the layout, store/online/tiles.py the argument protocol). Redis 6.2-compatible (EVALSHA, struct, PXAT).
--
-- KEYS, per key of the batch: its state (a string of doubles), its LAST state (a string; only when the
-- family has LAST features), its message-id buckets.
-- ARGV: the layout (ring count, per ring: offset, slots, stride, column ops; LAST count, per LAST: how many
--       tiles it keeps; the state's keep, ms after its newest event, 0: never expires), the empty state,
--       then per key: its counts (little-endian doubles: the newest event time of the batch in µs, the
--       bucket count, per bucket its expiry in Unix ms, negative when only a set created now takes it, and
--       its id count); the ids, bucket after bucket; the packed deltas (per delta: ring number, then the
--       ring's columns as doubles); with LAST features, the packed LAST deltas (per delta: feature number as
--       one byte, then the entry as the LAST state stores it).
-- A key whose batch holds a message id already applied changes nothing (its new ids are taken back, a set
-- it created is deleted) and is returned with those ids, so the caller folds it again without them: a
-- redelivery is never counted twice.
-- Returns a flat list: key number (1-based), duplicate count, the duplicate ids; ... (empty: all applied).
local ring_count = tonumber(ARGV[1])
local rings, p = {}, 2
for r = 1, ring_count do
  local stride, names = tonumber(ARGV[p + 2]), ARGV[p + 3]
  local ops = {}
  for c = 1, stride do ops[c] = string.byte(names, c) end
  rings[r] = { offset = tonumber(ARGV[p]), n = tonumber(ARGV[p + 1]), stride = stride, ops = ops,
               bytes = stride * 8, fmt = '<' .. string.rep('d', stride) }
  p = p + 4
end
local last_count, keeps = tonumber(ARGV[p]), {}
for j = 1, last_count do keeps[j] = tonumber(ARGV[p + j]) end
p = p + 1 + last_count
local keep_ms, empty = tonumber(ARGV[p]), ARGV[p + 1]
p = p + 2
local has_last = last_count > 0
local list_empty = string.rep('\0', 8 * last_count)
local ENTRY = 32 -- a LAST entry's head: '<dddI4I4' (tile, event time, ingest time, id size, value size)
local conflicts, k, key_number = {}, 1, 0

-- A delta of the slot's own tile is merged in; one of a newer tile replaces an older tile no window reads
-- any more; one older than the slot's tile is older than the ring holds: no window reads it any more.
-- MIN and MAX keep a NaN (x ~= x: NaN), as the offline SQL does.
local function merge(slot, delta, ops)
  for c = 2, #delta do
    local op, v = ops[c], delta[c]
    if op == 97 then slot[c] = slot[c] + v              -- 'a': add
    elseif op == 109 then                               -- 'm': min
      if v < slot[c] or v ~= v then slot[c] = v end
    elseif op == 77 then                                -- 'M': max
      if v > slot[c] or v ~= v then slot[c] = v end
    end
  end
  return slot
end

-- The LAST state: per feature `<I4 bytes><I4 count>` and its list, entries newest tile first, each
-- '<dddI4I4' (tile, event time, ingest time, id size, value size), the message id and the value; at most
-- `keep` of them (a tile older than all of them can never be a window's newest one). Then a tail of entries
-- folded since (each a feature byte and an entry). The tail is folded into the lists once it is longer than
-- TAIL bytes, so most folds are one APPEND; a read takes the lists and the tail together (a list's entry
-- and the tail's compete for the newest).
local TAIL = 384

-- (tile, event time, ingest time, message id) of a is later than b's; the id in byte order, not by the
-- locale's collation (Lua's <), and only read on a tie.
local function later_entry(state, a, b)
  if a[1] ~= b[1] then return a[1] > b[1] end
  if a[2] ~= b[2] then return a[2] > b[2] end
  if a[3] ~= b[3] then return a[3] > b[3] end
  local x = string.sub(state, a[6] + ENTRY, a[6] + ENTRY + a[4] - 1)
  local y = string.sub(state, b[6] + ENTRY, b[6] + ENTRY + b[4] - 1)
  local n = math.min(#x, #y)
  for i = 1, n do
    local u, v = string.byte(x, i), string.byte(y, i)
    if u ~= v then return u > v end
  end
  return #x > #y
end

local function compact(state)
  local lists, starts, pos = {}, {}, 1
  for j = 1, last_count do
    local size = struct.unpack('<I4', state, pos)
    starts[j], lists[j] = pos, false
    pos = pos + 8 + size
  end
  starts[last_count + 1] = pos
  local at = pos
  while at <= #state do -- the tail, by feature and tile: the latest entry of each tile
    local j = string.byte(state, at)
    local tile, ev, ing, id_size, value_size = struct.unpack('<dddI4I4', state, at + 1)
    local entry = { tile, ev, ing, id_size, value_size, at + 1 }
    local tiles = lists[j]
    if not tiles then
      tiles = {}
      lists[j] = tiles
      local from, stop = starts[j] + 8, starts[j + 1]
      while from < stop do -- the feature's list joins in
        local t, e, i, d, v = struct.unpack('<dddI4I4', state, from)
        tiles[t] = { t, e, i, d, v, from }
        from = from + ENTRY + d + v
      end
    end
    local held = tiles[tile]
    if not held or later_entry(state, entry, held) then tiles[tile] = entry end
    at = at + 1 + ENTRY + id_size + value_size
  end
  local parts = {}
  for j = 1, last_count do
    local tiles = lists[j]
    if tiles then
      local order = {}
      for _, e in pairs(tiles) do order[#order + 1] = e end
      table.sort(order, function(a, b) return a[1] > b[1] end)
      local kept, body = math.min(#order, keeps[j]), {}
      for n = 1, kept do
        local e = order[n]
        body[n] = string.sub(state, e[6], e[6] + ENTRY + e[4] + e[5] - 1)
      end
      body = table.concat(body)
      parts[#parts + 1] = struct.pack('<I4I4', #body, kept)
      parts[#parts + 1] = body
    else
      parts[#parts + 1] = string.sub(state, starts[j], starts[j + 1] - 1)
    end
  end
  return table.concat(parts)
end

local function set_last(last_key, state, expire_at)
  if keep_ms > 0 then
    redis.call('SET', last_key, state, 'PXAT', expire_at)
  else
    redis.call('SET', last_key, state)
  end
end

while k <= #KEYS do
  key_number = key_number + 1
  local blob_key = KEYS[k]
  local last_key = has_last and KEYS[k + 1] or nil
  local first_bucket = has_last and k + 2 or k + 1
  local counts = ARGV[p]
  local newest, bucket_count = struct.unpack('<dd', counts)
  p = p + 1
  local added, duplicates, expiries = {}, {}, {}
  for b = 1, bucket_count do
    local bucket = KEYS[first_bucket + b - 1]
    local expire, id_count = struct.unpack('<dd', counts, 17 + (b - 1) * 16)
    -- the first id goes with the SENTINEL member: 2 added, a new set; 1, an existing set; 0, a duplicate
    local created = redis.call('SADD', bucket, ARGV[p], '0')
    if created == 0 then duplicates[#duplicates + 1] = ARGV[p] else added[#added + 1] = { bucket, ARGV[p] } end
    created = created == 2
    for i = p + 1, p + id_count - 1 do
      if redis.call('SADD', bucket, ARGV[i]) == 1 then added[#added + 1] = { bucket, ARGV[i] }
      else duplicates[#duplicates + 1] = ARGV[i] end
    end
    p = p + id_count
    expiries[b] = { bucket, expire, created }
  end
  k = first_bucket + bucket_count
  local deltas = ARGV[p]
  local last_deltas = has_last and ARGV[p + 1] or ''
  p = has_last and p + 2 or p + 1
  if #duplicates > 0 then
    for _, e in ipairs(expiries) do
      if e[3] then redis.call('DEL', e[1]) end
    end
    for _, a in ipairs(added) do redis.call('SREM', a[1], a[2]) end
    conflicts[#conflicts + 1] = key_number
    conflicts[#conflicts + 1] = #duplicates
    for _, id in ipairs(duplicates) do conflicts[#conflicts + 1] = id end
  else
    for _, e in ipairs(expiries) do
      if e[2] > 0 or e[3] then redis.call('PEXPIREAT', e[1], string.format('%.0f', math.abs(e[2]))) end
    end
    -- slot by slot (GETRANGE/SETRANGE): moving the whole state in and out of Lua costs ~1 ns per byte. The
    -- header: the newest event time folded in, the LAST state's length when it was last compacted.
    local header = redis.call('GETRANGE', blob_key, 0, 15)
    local held_newest, compacted
    if #header < 16 then
      redis.call('SET', blob_key, empty)
      held_newest, compacted = -math.huge, 0
    else
      held_newest, compacted = struct.unpack('<dd', header)
    end
    local pos = 1
    while pos <= #deltas do
      local r, tile = struct.unpack('<dd', deltas, pos)
      local ring = rings[r]
      local offset = (ring.offset + (tile % ring.n) * ring.stride) * 8
      local held = redis.call('GETRANGE', blob_key, offset, offset + ring.bytes - 1)
      local held_tile = struct.unpack('<d', held)
      if held_tile < tile then -- an empty slot, or a tile no window reads any more: the delta as it came
        redis.call('SETRANGE', blob_key, offset, string.sub(deltas, pos + 8, pos + 7 + ring.bytes))
      elseif held_tile == tile then
        local slot, delta = { struct.unpack(ring.fmt, held) }, { struct.unpack(ring.fmt, deltas, pos + 8) }
        slot[ring.stride + 1], delta[ring.stride + 1] = nil, nil
        redis.call('SETRANGE', blob_key, offset, struct.pack(ring.fmt, unpack(merge(slot, delta, ring.ops))))
      end
      pos = pos + 8 + ring.bytes
    end
    local later = newest > held_newest
    local expire_at = string.format('%.0f', math.floor(math.max(newest, held_newest) / 1000) + keep_ms)
    local now_compacted = compacted
    if #last_deltas > 0 then
      local length = redis.call('APPEND', last_key, last_deltas)
      if length == #last_deltas then -- a new LAST state: its (empty) lists first
        set_last(last_key, list_empty .. last_deltas, expire_at)
        length, now_compacted = #list_empty + length, #list_empty
      elseif length - compacted > TAIL then
        local state = compact(redis.call('GET', last_key))
        set_last(last_key, state, expire_at)
        now_compacted = #state
      elseif later and keep_ms > 0 then
        redis.call('PEXPIREAT', last_key, expire_at)
      end
    elseif later and keep_ms > 0 and has_last then
      redis.call('PEXPIREAT', last_key, expire_at) -- it may hold entries: it expires with the state
    end
    if later or now_compacted ~= compacted then
      redis.call('SETRANGE', blob_key, 0, struct.pack('<dd', math.max(newest, held_newest), now_compacted))
      if later and keep_ms > 0 then redis.call('PEXPIREAT', blob_key, expire_at) end
    end
  end
end
return conflicts
