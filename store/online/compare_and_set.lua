-- Compare-and-set one online row on (event time, publish time); Redis 6.2-compatible (EVALSHA, no functions).
-- KEYS[1]  the row's key; the script touches no other key, so it runs on Redis Cluster as is.
-- ARGV[1]  the new value: a 16-byte header (event time, publish time: big-endian doubles, microseconds)
--          followed by the entity message's protobuf bytes
-- ARGV[2]  the new event time, ARGV[3] the new publish time (microseconds, decimal)
-- ARGV[4]  expiry in Unix milliseconds (event time + TTL), or "0" for none
-- Returns 1 when written, 0 when the stored row is newer or the same event (a replay changes nothing).
local old = redis.call('GET', KEYS[1])
if old then
  local old_event, old_publish = struct.unpack('>dd', old)
  local new_event, new_publish = tonumber(ARGV[2]), tonumber(ARGV[3])
  if new_event < old_event or (new_event == old_event and new_publish <= old_publish) then
    return 0
  end
end
if ARGV[4] == '0' then
  redis.call('SET', KEYS[1], ARGV[1])
else
  redis.call('SET', KEYS[1], ARGV[1], 'PXAT', ARGV[4])
end
return 1
