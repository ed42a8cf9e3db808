"""The Lua scripts records use, registered once per Redis client (EVALSHA; redis-py reloads a script
that a restarted Redis no longer knows)."""

from __future__ import annotations

import weakref

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


# Fair share between workspaces (ade.lifecycle.queue).
# KEYS: running, capped, RUNNING_RUNS, queue, the job's in-progress key, the applied cap.
# ARGV: run id, workspace id, cap, job id, now (ms), park until (ms).
# 1: hand the job to arq (a slot is held, or the job is not arq's to start now); 0: parked at the cap.
TAKE_WORKSPACE_SLOT = """
if redis.call('sismember', KEYS[1], ARGV[1]) == 1 or redis.call('exists', KEYS[5]) == 1 then return 1 end
local score = redis.call('zscore', KEYS[4], ARGV[4])
if not score or tonumber(score) > tonumber(ARGV[5]) then return 1 end
local cap = tonumber(ARGV[3])
redis.call('set', KEYS[6], ARGV[3])
if cap > 0 and redis.call('scard', KEYS[1]) >= cap then
  redis.call('zadd', KEYS[2], 0, ARGV[1])
  redis.call('zadd', KEYS[4], 'XX', ARGV[6], ARGV[4])
  return 0
end
redis.call('sadd', KEYS[1], ARGV[1])
redis.call('hset', KEYS[3], ARGV[1], ARGV[2])
redis.call('zrem', KEYS[2], ARGV[1])
return 1
"""

# Runners (ade.lifecycle.queue.claim_offer). KEYS: offers, offer terms, running, RUNNING_RUNS.
# ARGV: run id, workspace id, cap. -1: someone else took it; 0: its workspace is at its cap; 1: claimed,
# with a workspace slot held.
TAKE_OFFER = """
if not redis.call('zscore', KEYS[1], ARGV[1]) then return -1 end
local cap = tonumber(ARGV[3])
if cap > 0 and redis.call('sismember', KEYS[3], ARGV[1]) == 0 and redis.call('scard', KEYS[3]) >= cap then
  return 0
end
redis.call('zrem', KEYS[1], ARGV[1])
redis.call('hdel', KEYS[2], ARGV[1])
redis.call('sadd', KEYS[3], ARGV[1])
redis.call('hset', KEYS[4], ARGV[1], ARGV[2])
return 1
"""

# KEYS: running, capped, RUNNING_RUNS, queue. ARGV: run id, now (ms), run job id prefix.
# Gives a run's slot back (idempotent); returns the parked run made due in its place, if any.
GIVE_BACK_WORKSPACE_SLOT = """
redis.call('zrem', KEYS[2], ARGV[1])
redis.call('hdel', KEYS[3], ARGV[1])
if redis.call('srem', KEYS[1], ARGV[1]) == 0 then return false end
while true do
  local parked = redis.call('zrange', KEYS[2], 0, 0)[1]
  if not parked then return false end
  redis.call('zrem', KEYS[2], parked)
  if redis.call('zscore', KEYS[4], ARGV[3] .. parked) then
    redis.call('zadd', KEYS[4], 'XX', ARGV[2], ARGV[3] .. parked)
    return parked
  end
end
"""

# KEYS: capped, queue, the applied cap. ARGV: now (ms), run job id prefix. Every parked run due now, the
# applied cap forgotten (the workspace's cap changed).
UNPARK_ALL = """
local parked = redis.call('zrange', KEYS[1], 0, -1)
for _, run in ipairs(parked) do
  if redis.call('zscore', KEYS[2], ARGV[2] .. run) then
    redis.call('zadd', KEYS[2], 'XX', ARGV[1], ARGV[2] .. run)
  end
end
redis.call('del', KEYS[1], KEYS[3])
return #parked
"""


class Scripts:
    def __init__(self, redis: Redis) -> None:
        self.claim_build = redis.register_script(CLAIM_BUILD)
        self.release_fingerprint = redis.register_script(RELEASE_FINGERPRINT)
        self.take_offer = redis.register_script(TAKE_OFFER)
        self.forget_ready = redis.register_script(FORGET_READY)
        self.take_stream_slot = redis.register_script(TAKE_STREAM_SLOT)
        self.take_slot = redis.register_script(TAKE_WORKSPACE_SLOT)
        self.give_back = redis.register_script(GIVE_BACK_WORKSPACE_SLOT)
        self.unpark_all = redis.register_script(UNPARK_ALL)


_registered: weakref.WeakKeyDictionary[Redis, Scripts] = weakref.WeakKeyDictionary()


def scripts_for(redis: Redis) -> Scripts:
    """Every script, registered once per Redis client (EVALSHA; reloaded after a Redis restart)."""
    found = _registered.get(redis)
    if found is None:
        found = _registered[redis] = Scripts(redis)
    return found
