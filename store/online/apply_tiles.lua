-- Fold one batch of pre-aggregated events into aggregation tiles, per key (store/online/tile_layout.py has
-- the layout, store/online/tiles.py the argument protocol). Redis 6.2-compatible (EVALSHA, struct, PXAT).
--
-- KEYS, per key of the batch: its state (a string of doubles), its LAST state (a string; only when the
-- family has LAST features), its message-id buckets.
-- ARGV: the layout (ring count, per ring: its head's offset, its slots' offset, slots, stride, column ops;
--       LAST list count, per list: how many tiles it keeps; the state's keep, ms after its newest event's
--       hour, 0: never expires), the empty state, per LAST list its settled tile (below),
--       then per key: its counts (little-endian doubles: the newest event time of the batch in µs, the
--       bucket count, per bucket its expiry in Unix ms, negative when only a set created now takes it, and
--       its id count); the ids, bucket after bucket; the packed deltas (per delta: ring number, then the
--       ring's columns as doubles, padded with zeros to the widest ring's); with LAST features, the packed
--       LAST deltas (per delta: list number as one byte, then the entry as the LAST state stores it).
-- A key whose batch holds a message id already applied changes nothing (its new ids are taken back, a set
-- it created is deleted) and is returned with those ids, so the caller folds it again without them: a
-- redelivery is never counted twice.
-- Returns a flat list: key number (1-based), duplicate count, the duplicate ids; ... (empty: all applied).
local ring_count = tonumber(ARGV[1])
local rings, p = {}, 2
for r = 1, ring_count do
  local stride, names = tonumber(ARGV[p + 3]), ARGV[p + 4]
  local ops = {}
  for c = 1, stride do ops[c] = string.byte(names, c) end
  -- a head's columns, then a slot's: the same but the tile number, which the slot's position implies
  rings[r] = { head = tonumber(ARGV[p]), offset = tonumber(ARGV[p + 1]), n = tonumber(ARGV[p + 2]),
               stride = stride, ops = ops, fmt = '<' .. string.rep('d', stride),
               slot_stride = stride - 1, slot_bytes = (stride - 1) * 8, slot_fmt = '<' .. string.rep('d', stride - 1) }
  p = p + 5
end
local widest = 0
for r = 1, ring_count do widest = math.max(widest, rings[r].stride) end
local delta_bytes = 8 + 8 * widest -- a delta: its ring number, then its ring's columns, padded to the widest's
local front = rings[1].offset * 8 -- the header and the heads, read and written as one range
local front_fmt = '<' .. string.rep('d', rings[1].offset)
local last_count, keeps = tonumber(ARGV[p]), {}
for j = 1, last_count do keeps[j] = tonumber(ARGV[p + j]) end
p = p + 1 + last_count
local keep_ms, empty = tonumber(ARGV[p]), ARGV[p + 1]
p = p + 2
for r = 1, ring_count do -- an empty slot's bytes, as the empty state holds them
  local ring = rings[r]
  ring.empty_slot = string.sub(empty, ring.offset * 8 + 1, ring.offset * 8 + ring.slot_bytes)
end
-- per LAST list, the newest tile every read from now on reaches past (the caller's clock, less a margin for
-- the readers' clocks): of the entries at or before it only the newest can still be a window's
local settled = {}
for j = 1, last_count do settled[j] = tonumber(ARGV[p + j - 1]) end
p = p + last_count
local has_last = last_count > 0
local list_empty = string.rep('\0', 8 * last_count)
local ENTRY = 32 -- a LAST entry's head: '<dddI4I4' (tile, event time, ingest time, id size, value size)
local conflicts, k, key_number = {}, 1, 0

-- A delta merged into a head or slot of its tile (the delta's column c at slot[at + c]: a slot leaves the tile
-- number out, so it is merged with at = -1). An empty slot merges as the delta itself. MIN and MAX keep a NaN
-- (x ~= x: NaN), as the offline SQL does.
local function merge_into(slot, at, delta, ops, stride)
  for c = 2, stride do
    local op, v, i = ops[c], delta[c], at + c
    if op == 97 then slot[i] = slot[i] + v              -- 'a': add
    elseif op == 109 then                               -- 'm': min
      if v < slot[i] or v ~= v then slot[i] = v end
    elseif op == 77 then                                -- 'M': max
      if v > slot[i] or v ~= v then slot[i] = v end
    end
  end
end

-- Empty the ring's slots of tiles first .. last (a head's move skipped them: what they held is older than
-- the ring holds now), one or two ranges.
local function empty_slots(blob_key, ring, first, last)
  local count = math.min(last - first + 1, ring.n)
  if count <= 0 then return end
  local start = first % ring.n
  local run = math.min(count, ring.n - start)
  redis.call('SETRANGE', blob_key, (ring.offset + start * ring.slot_stride) * 8, string.rep(ring.empty_slot, run))
  if count > run then
    redis.call('SETRANGE', blob_key, ring.offset * 8, string.rep(ring.empty_slot, count - run))
  end
end

-- The LAST state: per field with LAST features (its features share it) `<I4 bytes><I4 count>` and its
-- list, entries newest tile first (tiles of the field's finest LAST tile size), each
-- '<dddI4I4' (tile, event time, ingest time, id size, value size), the message id and the value; at most
-- `keep` of them (a tile older than all of them can never be a window's newest one). Then a tail of entries
-- folded since (each a list byte and an entry). The tail is folded into the lists once it is longer than
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
  while at <= #state do -- the tail, by list and tile: the latest entry of each tile
    local j = string.byte(state, at)
    local tile, ev, ing, id_size, value_size = struct.unpack('<dddI4I4', state, at + 1)
    local entry = { tile, ev, ing, id_size, value_size, at + 1 }
    local tiles = lists[j]
    if not tiles then
      tiles = {}
      lists[j] = tiles
      local from, stop = starts[j] + 8, starts[j + 1]
      while from < stop do -- the list joins in
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
      local kept, body = 0, {}
      for n = 1, math.min(#order, keeps[j]) do
        local e = order[n]
        body[n], kept = string.sub(state, e[6], e[6] + ENTRY + e[4] + e[5] - 1), n
        if e[1] <= settled[j] then break end
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
  -- ids added (bucket, id: to take back on a duplicate), duplicates, per bucket (set, expiry, created)
  local added, duplicates, expiries = {}, nil, {}
  for b = 1, bucket_count do
    local bucket = KEYS[first_bucket + b - 1]
    local expire, id_count = struct.unpack('<dd', counts, 17 + (b - 1) * 16)
    -- the first id goes with the SENTINEL member: 2 added, a new set; 1, an existing set; 0, a duplicate
    local created = redis.call('SADD', bucket, ARGV[p], '0')
    if created == 0 then duplicates = { ARGV[p] } else added[#added + 1] = bucket; added[#added + 1] = ARGV[p] end
    for i = p + 1, p + id_count - 1 do
      if redis.call('SADD', bucket, ARGV[i]) == 1 then added[#added + 1] = bucket; added[#added + 1] = ARGV[i]
      elseif duplicates then duplicates[#duplicates + 1] = ARGV[i]
      else duplicates = { ARGV[i] } end
    end
    p = p + id_count
    expiries[#expiries + 1] = bucket
    expiries[#expiries + 1] = expire
    expiries[#expiries + 1] = created == 2
  end
  k = first_bucket + bucket_count
  local deltas = ARGV[p]
  local last_deltas = has_last and ARGV[p + 1] or ''
  p = has_last and p + 2 or p + 1
  if duplicates then
    for e = 1, #expiries, 3 do
      if expiries[e + 2] then redis.call('DEL', expiries[e]) end
    end
    for a = 1, #added, 2 do redis.call('SREM', added[a], added[a + 1]) end
    conflicts[#conflicts + 1] = key_number
    conflicts[#conflicts + 1] = #duplicates
    for _, id in ipairs(duplicates) do conflicts[#conflicts + 1] = id end
  else
    for e = 1, #expiries, 3 do
      local expire = expiries[e + 1]
      if expire > 0 or expiries[e + 2] then
        redis.call('PEXPIREAT', expiries[e], string.format('%.0f', math.abs(expire)))
      end
    end
    -- range by range (GETRANGE/SETRANGE): moving the whole state in and out of Lua costs ~1 ns per byte. The
    -- front: the header (the newest event time folded in, the LAST state's length when it was last
    -- compacted), then each ring's head, its newest tile: one table, ring r's head at rings[r].head.
    local held = redis.call('GETRANGE', blob_key, 0, front - 1)
    if #held < front then
      redis.call('SET', blob_key, empty)
      held = string.sub(empty, 1, front)
    end
    local f = { struct.unpack(front_fmt, held) }
    local held_newest, compacted = f[1], f[2]
    local pos = 1
    while pos <= #deltas do
      local r, tile = struct.unpack('<dd', deltas, pos)
      local ring = rings[r]
      local at, stride = ring.head, ring.stride -- f[at + 1] is the head's tile number
      local head_tile = f[at + 1]
      if tile == head_tile then
        local delta = { struct.unpack(ring.fmt, deltas, pos + 8) }
        merge_into(f, at, delta, ring.ops, stride)
      elseif tile > head_tile then -- a newer tile: the head moves on, the old one to its slot
        if head_tile > -math.huge then
          if tile - head_tile <= ring.n then -- the ring still holds the old head's tile
            redis.call('SETRANGE', blob_key, (ring.offset + (head_tile % ring.n) * ring.slot_stride) * 8,
                       struct.pack(ring.slot_fmt, unpack(f, at + 2, at + stride)))
          end
          empty_slots(blob_key, ring, head_tile + 1, tile - 1)
        end
        local delta = { struct.unpack(ring.fmt, deltas, pos + 8) }
        for c = 1, stride do f[at + c] = delta[c] end
      elseif tile >= head_tile - ring.n then -- older than the head, and its ring still holds the tile
        local offset = (ring.offset + (tile % ring.n) * ring.slot_stride) * 8
        local slot = { struct.unpack(ring.slot_fmt, redis.call('GETRANGE', blob_key, offset,
                                                              offset + ring.slot_bytes - 1)) }
        slot[ring.slot_stride + 1] = nil
        local delta = { struct.unpack(ring.fmt, deltas, pos + 8) }
        merge_into(slot, -1, delta, ring.ops, stride) -- slot[c - 1] is the delta's column c
        redis.call('SETRANGE', blob_key, offset, struct.pack(ring.slot_fmt, unpack(slot)))
      end -- (older than the ring holds: no window reads it any more)
      pos = pos + delta_bytes
    end
    -- the expiry is the newest event's hour's end plus keep: it moves (PEXPIREAT) once an hour, not per fold
    local hour = math.floor(math.max(newest, held_newest) / 3600000000)
    local moved = hour > math.floor(held_newest / 3600000000)
    local expire_at = string.format('%.0f', (hour + 1) * 3600000 + keep_ms)
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
      elseif moved and keep_ms > 0 then
        redis.call('PEXPIREAT', last_key, expire_at)
      end
    elseif moved and keep_ms > 0 and has_last then
      redis.call('PEXPIREAT', last_key, expire_at) -- it may hold entries: it expires with the state
    end
    f[1], f[2] = math.max(newest, held_newest), now_compacted
    redis.call('SETRANGE', blob_key, 0, struct.pack(front_fmt, unpack(f, 1, front / 8)))
    if moved and keep_ms > 0 then redis.call('PEXPIREAT', blob_key, expire_at) end
  end
end
return conflicts
