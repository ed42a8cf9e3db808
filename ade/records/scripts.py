"""The Lua scripts records use, registered once per Redis client (EVALSHA; redis-py reloads a script
that a restarted Redis no longer knows)."""

from __future__ import annotations

from redis.asyncio import Redis

# KEYS: ready, active. ARGV: new id, force ("1"/"0"), active TTL. Decides, atomically across API processes
# and workers, whether a build request reuses a ready build, joins the one being prepared, or creates one.
CLAIM_BUILD = """
if ARGV[2] == '0' then
  local ready = redis.call('get', KEYS[1])
  if ready then return {'reused', ready} end
end
local active = redis.call('get', KEYS[2])
if active then return {'joined', active} end
redis.call('set', KEYS[2], ARGV[1], 'EX', ARGV[3])
return {'created', ARGV[1]}
"""

# KEYS: ready, active. ARGV: build id, ready ("1"/"0"). Ends a build's claim on its fingerprint.
RELEASE_FINGERPRINT = """
if redis.call('get', KEYS[2]) == ARGV[1] then redis.call('del', KEYS[2]) end
if ARGV[2] == '1' then redis.call('set', KEYS[1], ARGV[1]) end
return 1
"""

# KEYS: ready. ARGV: build id. Forgets the fingerprint's ready build only if it is this one (retention).
FORGET_READY = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end return 0"

# KEYS: an API key's SSE slots. ARGV: now_ms, limit, expiry_ms, member. Takes a slot if the key holds fewer
# than `limit` live ones (ADE_MAX_STREAMS_PER_KEY, counted across API processes).
TAKE_STREAM_SLOT = """
redis.call('zremrangebyscore', KEYS[1], '-inf', ARGV[1])
if redis.call('zcard', KEYS[1]) >= tonumber(ARGV[2]) then return 0 end
redis.call('zadd', KEYS[1], ARGV[3], ARGV[4])
redis.call('pexpire', KEYS[1], ARGV[3] - ARGV[1])
return 1
"""


class Scripts:
    def __init__(self, redis: Redis) -> None:
        self.claim_build = redis.register_script(CLAIM_BUILD)
        self.release_fingerprint = redis.register_script(RELEASE_FINGERPRINT)
        self.forget_ready = redis.register_script(FORGET_READY)
        self.take_stream_slot = redis.register_script(TAKE_STREAM_SLOT)
