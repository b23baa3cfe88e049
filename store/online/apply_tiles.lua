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
-- the functions the per-key loop calls, as locals: a global is a table lookup on every use
local call, pack_bytes, unpack_bytes, unpack = redis.call, struct.pack, struct.unpack, unpack
local abs, floor, huge, max, min = math.abs, math.floor, math.huge, math.max, math.min
local ring_count = tonumber(ARGV[1])
local rings, p = {}, 2
for r = 1, ring_count do
  local stride, names = tonumber(ARGV[p + 3]), ARGV[p + 4]
  local ops = {}
  for c = 1, stride do ops[c] = string.byte(names, c) end
  -- a head's columns, then a slot's: the same but the tile number, which the slot's position implies
  rings[r] = { head = tonumber(ARGV[p]), offset = tonumber(ARGV[p + 1]), n = tonumber(ARGV[p + 2]),
               stride = stride, ops = ops,
               slot_stride = stride - 1, slot_bytes = (stride - 1) * 8, slot_fmt = '<' .. string.rep('d', stride - 1) }
  p = p + 5
end
local widest = 0
for r = 1, ring_count do widest = max(widest, rings[r].stride) end
local delta_bytes = 8 + 8 * widest -- a delta: its ring number, then its ring's columns, padded to the widest's
-- A key's deltas are unpacked up to DELTAS_AT_ONCE in one call (its results go on Lua's bounded stack) into one
-- table: delta q's ring number at [q * (1 + widest) + 1], its column c at [q * (1 + widest) + 1 + c].
local DELTAS_AT_ONCE = 32
local delta_formats = {}
local function unpack_deltas(deltas, from, count)
  local format = delta_formats[count]
  if not format then
    format = '<' .. string.rep('d', count * (1 + widest))
    delta_formats[count] = format
  end
  return { unpack_bytes(format, deltas, from) }
end
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
  ring.ranges = {}
end
-- Byte offsets go to GETRANGE and SETRANGE as strings, made once per call: redis.call formats a number
-- argument with sprintf every time, which cost more than the command.
local front_last = string.format('%d', front - 1)
local function slot_range(ring, j) -- slot j's first and last byte
  local range = ring.ranges[j]
  if not range then
    local first = (ring.offset + j * ring.slot_stride) * 8
    range = { string.format('%d', first), string.format('%d', first + ring.slot_bytes - 1) }
    ring.ranges[j] = range
  end
  return range
end
local function ms(x) return string.format('%.0f', x) end
-- per LAST list, the newest tile every read from now on reaches past (the caller's clock, less a margin for
-- the readers' clocks): of the entries at or before it only the newest can still be a window's
local settled = {}
for j = 1, last_count do settled[j] = tonumber(ARGV[p + j - 1]) end
p = p + last_count
local has_last = last_count > 0
local list_empty = string.rep('\0', 8 * last_count)
local ENTRY = 32 -- a LAST entry's head: '<dddI4I4' (tile, event time, ingest time, id size, value size)
local conflicts, k, key_number = {}, 1, 0
-- per key, reused: the ids it added (set, id: taken back on a duplicate), per id set (set, expiry, created)
local added, expiries = {}, {}

-- A delta merged into a head or slot of its tile (the delta's column c, delta[from + c], at slot[at + c]: a slot
-- leaves the tile number out, so it is merged with at = -1). An empty slot merges as the delta itself. MIN and
-- MAX keep a NaN (x ~= x: NaN), as the offline SQL does.
local function merge_into(slot, at, delta, from, ops, stride)
  for c = 2, stride do
    local op, v, i = ops[c], delta[from + c], at + c
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
  local count = min(last - first + 1, ring.n)
  if count <= 0 then return end
  local start = first % ring.n
  local run = min(count, ring.n - start)
  call('SETRANGE', blob_key, slot_range(ring, start)[1], string.rep(ring.empty_slot, run))
  if count > run then
    call('SETRANGE', blob_key, slot_range(ring, 0)[1], string.rep(ring.empty_slot, count - run))
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
  local n = min(#x, #y)
  for i = 1, n do
    local u, v = string.byte(x, i), string.byte(y, i)
    if u ~= v then return u > v end
  end
  return #x > #y
end

local function compact(state)
  local lists, starts, pos = {}, {}, 1
  for j = 1, last_count do
    local size = unpack_bytes('<I4', state, pos)
    starts[j], lists[j] = pos, false
    pos = pos + 8 + size
  end
  starts[last_count + 1] = pos
  local at = pos
  while at <= #state do -- the tail, by list and tile: the latest entry of each tile
    local j = string.byte(state, at)
    local tile, ev, ing, id_size, value_size = unpack_bytes('<dddI4I4', state, at + 1)
    local entry = { tile, ev, ing, id_size, value_size, at + 1 }
    local tiles = lists[j]
    if not tiles then
      tiles = {}
      lists[j] = tiles
      local from, stop = starts[j] + 8, starts[j + 1]
      while from < stop do -- the list joins in
        local t, e, i, d, v = unpack_bytes('<dddI4I4', state, from)
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
      for n = 1, min(#order, keeps[j]) do
        local e = order[n]
        body[n], kept = string.sub(state, e[6], e[6] + ENTRY + e[4] + e[5] - 1), n
        if e[1] <= settled[j] then break end
      end
      body = table.concat(body)
      parts[#parts + 1] = pack_bytes('<I4I4', #body, kept)
      parts[#parts + 1] = body
    else
      parts[#parts + 1] = string.sub(state, starts[j], starts[j + 1] - 1)
    end
  end
  return table.concat(parts)
end

local function set_last(last_key, state, expire_at)
  if keep_ms > 0 then
    call('SET', last_key, state, 'PXAT', ms(expire_at))
  else
    call('SET', last_key, state)
  end
end

while k <= #KEYS do
  key_number = key_number + 1
  local blob_key = KEYS[k]
  local last_key = has_last and KEYS[k + 1] or nil
  local first_bucket = has_last and k + 2 or k + 1
  local counts = ARGV[p]
  local newest, bucket_count = unpack_bytes('<dd', counts)
  p = p + 1
  local added_count, duplicates = 0, nil
  for b = 1, bucket_count do
    local bucket = KEYS[first_bucket + b - 1]
    local expire, id_count = unpack_bytes('<dd', counts, 17 + (b - 1) * 16)
    -- the first id goes with the SENTINEL member: 2 added, a new set; 1, an existing set; 0, a duplicate
    local created = call('SADD', bucket, ARGV[p], '0')
    if created == 0 then
      duplicates = { ARGV[p] }
    else
      added[added_count + 1], added[added_count + 2], added_count = bucket, ARGV[p], added_count + 2
    end
    for i = p + 1, p + id_count - 1 do
      if call('SADD', bucket, ARGV[i]) == 1 then
        added[added_count + 1], added[added_count + 2], added_count = bucket, ARGV[i], added_count + 2
      elseif duplicates then duplicates[#duplicates + 1] = ARGV[i]
      else duplicates = { ARGV[i] } end
    end
    p = p + id_count
    local e = 3 * b - 2
    expiries[e], expiries[e + 1], expiries[e + 2] = bucket, expire, created == 2
  end
  k = first_bucket + bucket_count
  local deltas = ARGV[p]
  local last_deltas = has_last and ARGV[p + 1] or ''
  p = has_last and p + 2 or p + 1
  if duplicates then
    for e = 1, 3 * bucket_count, 3 do
      if expiries[e + 2] then call('DEL', expiries[e]) end
    end
    for a = 1, added_count, 2 do call('SREM', added[a], added[a + 1]) end
    conflicts[#conflicts + 1] = key_number
    conflicts[#conflicts + 1] = #duplicates
    for _, id in ipairs(duplicates) do conflicts[#conflicts + 1] = id end
  else
    for e = 1, 3 * bucket_count, 3 do
      local expire = expiries[e + 1]
      if expire > 0 or expiries[e + 2] then
        call('PEXPIREAT', expiries[e], ms(abs(expire)))
      end
    end
    -- range by range (GETRANGE/SETRANGE): moving the whole state in and out of Lua costs ~1 ns per byte. The
    -- front: the header (the newest event time folded in, the LAST state's length when it was last
    -- compacted), then each ring's head, its newest tile: one table, ring r's head at rings[r].head.
    local held = call('GETRANGE', blob_key, '0', front_last)
    if #held < front then
      call('SET', blob_key, empty)
      held = string.sub(empty, 1, front)
    end
    local f = { unpack_bytes(front_fmt, held) }
    local held_newest, compacted = f[1], f[2]
    local delta_count, done = #deltas / delta_bytes, 0
    while done < delta_count do
      local count = min(DELTAS_AT_ONCE, delta_count - done)
      local delta = unpack_deltas(deltas, done * delta_bytes + 1, count)
      for q = 0, count - 1 do
        local from = q * (1 + widest) + 1 -- delta[from]: the ring number, delta[from + 1]: the tile number
        local ring = rings[delta[from]]
        local tile = delta[from + 1]
        local at, stride = ring.head, ring.stride -- f[at + 1] is the head's tile number
        local head_tile = f[at + 1]
        if tile == head_tile then
          merge_into(f, at, delta, from, ring.ops, stride)
        elseif tile > head_tile then -- a newer tile: the head moves on, the old one to its slot
          if head_tile > -huge then
            if tile - head_tile <= ring.n then -- the ring still holds the old head's tile
              call('SETRANGE', blob_key, slot_range(ring, head_tile % ring.n)[1],
                         pack_bytes(ring.slot_fmt, unpack(f, at + 2, at + stride)))
            end
            empty_slots(blob_key, ring, head_tile + 1, tile - 1)
          end
          for c = 1, stride do f[at + c] = delta[from + c] end
        elseif tile >= head_tile - ring.n then -- older than the head, and its ring still holds the tile
          local range = slot_range(ring, tile % ring.n)
          local slot = { unpack_bytes(ring.slot_fmt, call('GETRANGE', blob_key, range[1], range[2])) }
          slot[ring.slot_stride + 1] = nil
          merge_into(slot, -1, delta, from, ring.ops, stride) -- slot[c - 1] is the delta's column c
          call('SETRANGE', blob_key, range[1], pack_bytes(ring.slot_fmt, unpack(slot)))
        end -- (older than the ring holds: no window reads it any more)
      end
      done = done + count
    end
    -- the expiry is the newest event's hour's end plus keep: it moves (PEXPIREAT) once an hour, not per fold
    local hour = floor(max(newest, held_newest) / 3600000000)
    local moved = hour > floor(held_newest / 3600000000)
    local expire_at = (hour + 1) * 3600000 + keep_ms -- formatted (ms) only when it is given
    local now_compacted = compacted
    if #last_deltas > 0 then
      local length = call('APPEND', last_key, last_deltas)
      if length == #last_deltas then -- a new LAST state: its (empty) lists first
        set_last(last_key, list_empty .. last_deltas, expire_at)
        length, now_compacted = #list_empty + length, #list_empty
      elseif length - compacted > TAIL then
        local state = compact(call('GET', last_key))
        set_last(last_key, state, expire_at)
        now_compacted = #state
      elseif moved and keep_ms > 0 then
        call('PEXPIREAT', last_key, ms(expire_at))
      end
    elseif moved and keep_ms > 0 and has_last then
      call('PEXPIREAT', last_key, ms(expire_at)) -- it may hold entries: it expires with the state
    end
    f[1], f[2] = max(newest, held_newest), now_compacted
    call('SETRANGE', blob_key, '0', pack_bytes(front_fmt, unpack(f, 1, front / 8)))
    if moved and keep_ms > 0 then call('PEXPIREAT', blob_key, ms(expire_at)) end
  end
end
return conflicts
