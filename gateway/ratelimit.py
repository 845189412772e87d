"""Per-account request rates at the gateway: GCRA, in this process or shared through Redis.

GCRA keeps one number per account, the theoretical arrival time (TAT): when the
account's allowance would be full again if it made no more requests. Each
request pushes it one interval (1 / rate) later; a request that would push it
more than `capacity` intervals past now is refused and changes nothing. It is a
token bucket of `capacity` tokens refilled at the rate, stored as one integer.
"""

from __future__ import annotations

import logging
import math
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Protocol

from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from gateway.errors import ApiError

logger = logging.getLogger(__name__)

_MICROS = 1_000_000
DEFAULT_KEY_PREFIX = "dcp:ratelimit:"
# A Redis that fails is not asked again for this long, so a hanging one costs
# one timeout a second rather than one per request.
_REDIS_PAUSE_SECONDS = 1.0
_WARN_EVERY_SECONDS = 60.0


@dataclass(frozen=True)
class RatePolicy:
    """How many requests one account may make."""

    per_second: float
    """Steady rate; positive."""
    burst: int = 0
    """Requests that may come at once; 0 means one second's worth (at least one)."""

    def __post_init__(self) -> None:
        if not (math.isfinite(self.per_second) and self.per_second > 0):
            raise ValueError(f"the rate must be a positive number of requests per second, got {self.per_second}")
        if self.burst < 0:
            raise ValueError(f"the burst must not be negative, got {self.burst}")

    @property
    def capacity(self) -> int:
        return self.burst or max(1, math.ceil(self.per_second))

    @property
    def interval_us(self) -> int:
        # Whole microseconds keep the arithmetic exact both in Python and in
        # Lua, whose numbers are doubles (exact integers up to 2**53).
        return max(1, round(_MICROS / self.per_second))


@dataclass(frozen=True)
class Allowance:
    """What one request left of its account's allowance."""

    allowed: bool
    limit: int
    remaining: int
    reset_us: int
    """Until the allowance is full again."""
    retry_after_us: int
    """Until a refused request would be allowed; 0 when allowed."""

    def headers(self) -> dict[str, str]:
        # draft-ietf-httpapi-ratelimit-headers: delta-seconds, rounded up so
        # that a client waiting that long finds the allowance full.
        return {
            "RateLimit-Limit": str(self.limit),
            "RateLimit-Remaining": str(self.remaining),
            "RateLimit-Reset": str(_ceil_seconds(self.reset_us)),
        }

    def refusal(self) -> ApiError:
        # Retry-After of 0 would invite an immediate retry that is refused again.
        seconds = max(1, _ceil_seconds(self.retry_after_us))
        return ApiError(
            429,
            f"this account made more requests than its rate limit allows; retry in {seconds} s",
            code="RATE_LIMITED",
            headers={"Retry-After": str(seconds)},
        )


def _ceil_seconds(micros: int) -> int:
    return -(-micros // _MICROS)


def _gcra(tat: int, now: int, interval: int, capacity: int) -> tuple[Allowance, int]:
    """The decision for a request at `now`, and the account's TAT after it."""
    tat = max(tat, now)
    after = tat + interval
    window = interval * capacity
    if after - now > window:
        return Allowance(False, capacity, 0, tat - now, after - window - now), tat
    return Allowance(True, capacity, (window - (after - now)) // interval, after - now, 0), after


class RateLimiter(Protocol):
    async def take(self, account_id: int) -> Allowance | None:
        """Counts one request of the account; None when the limit cannot be told (the request is served)."""


class LocalRateLimiter:
    """Allowances kept in this process: each gateway replica limits on its own."""

    def __init__(self, policy: RatePolicy, *, max_accounts: int = 100_000) -> None:
        self._interval = policy.interval_us
        self._capacity = policy.capacity
        self._max_accounts = max_accounts
        # Account id to TAT on the monotonic clock, least recently used first.
        self._tats: OrderedDict[int, int] = OrderedDict()

    def __len__(self) -> int:
        return len(self._tats)

    async def take(self, account_id: int) -> Allowance:
        now = time.monotonic_ns() // 1000
        allowance, tat = _gcra(self._tats.get(account_id, now), now, self._interval, self._capacity)
        self._tats[account_id] = tat
        self._tats.move_to_end(account_id)
        self._evict(now)
        return allowance

    def _evict(self, now: int) -> None:
        # A TAT in the past is a full allowance, the same as no entry, so idle
        # accounts cost nothing. Past the cap the least recently used account
        # is forgotten even if it is not full: it then starts afresh, which is
        # better than memory without bound.
        while self._tats:
            oldest, tat = next(iter(self._tats.items()))
            if tat > now and len(self._tats) <= self._max_accounts:
                return
            del self._tats[oldest]


# KEYS[1]: the account's key. ARGV: interval (µs), capacity. Returns allowed,
# remaining, reset (µs), retry after (µs), as _gcra does. Server time, so that
# replicas with skewed clocks agree; reading TIME before a write relies on
# effects replication, the default since Redis 5. The key expires when the
# allowance is full again, which is when it would stop mattering.
_GCRA_LUA = """
local interval = tonumber(ARGV[1])
local capacity = tonumber(ARGV[2])
local window = interval * capacity
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000000 + tonumber(clock[2])
local tat = tonumber(redis.call('GET', KEYS[1])) or now
if tat < now then
  tat = now
end
local after = tat + interval
if after - now > window then
  return {0, 0, tat - now, after - window - now}
end
-- %.0f: tostring would round a 16-digit number to 14 significant digits.
redis.call('SET', KEYS[1], string.format('%.0f', after), 'PX', string.format('%.0f', math.ceil((after - now) / 1000)))
return {1, math.floor((window - (after - now)) / interval), after - now, 0}
"""


def open_redis(url: str) -> Redis:
    """A Redis client suited to rate limits; whoever opens it closes it with `aclose()`."""
    # The default client retries ten times with back-off, seconds in all, and
    # every request would wait through that while Redis is down. Short timeouts
    # and one immediate retry (for a pooled connection the server dropped)
    # fail fast, and the limiter then serves the request.
    return Redis.from_url(url, socket_connect_timeout=0.5, socket_timeout=0.5, retry=Retry(NoBackoff(), 1))


class RedisRateLimiter:
    """Allowances kept in Redis: every gateway replica using it shares them.

    If Redis cannot be reached the request is served without limits (fail
    open): rate limits protect the platform from a few heavy callers, and
    refusing everyone while Redis is down would turn a Redis outage into a full
    outage.
    """

    def __init__(self, redis: Redis, policy: RatePolicy, *, key_prefix: str = DEFAULT_KEY_PREFIX) -> None:
        self._script = redis.register_script(_GCRA_LUA)
        self._args = (policy.interval_us, policy.capacity)
        self._prefix = key_prefix
        self._paused_until = 0.0
        self._warned_at: float | None = None

    async def take(self, account_id: int) -> Allowance | None:
        if time.monotonic() < self._paused_until:
            return None
        try:
            # EVALSHA, loading the script and retrying once when the server does not know it.
            reply = await self._script(keys=[f"{self._prefix}{account_id}"], args=self._args)
        except (RedisError, OSError) as error:
            self._paused_until = time.monotonic() + _REDIS_PAUSE_SECONDS
            self._warn(error)
            return None
        allowed, remaining, reset_us, retry_after_us = (int(value) for value in reply)
        return Allowance(bool(allowed), self._args[1], remaining, reset_us, retry_after_us)

    def _warn(self, error: Exception) -> None:
        now = time.monotonic()
        if self._warned_at is not None and now - self._warned_at < _WARN_EVERY_SECONDS:
            return
        self._warned_at = now
        logger.warning("rate limits are not applied: Redis is unavailable (%s)", error)
