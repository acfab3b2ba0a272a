"""What one user may make the node store: unsent bytes held at once, and bytes a day.

UPLOAD_QUOTA_BYTES bounds the bytes of a user's uploads not yet sent with a message
(a sent one belongs to its conversation and goes with it; an unsent one goes at the
cleanup after UPLOAD_UNATTACHED_HOURS). UPLOAD_BYTES_PER_DAY is a bucket of bytes in the
rate limiter (in Redis with several nodes, so it is one for the cluster), refilled
evenly over a day and holding a day's worth at most: it bounds what one account can
make the node receive and store, sent or not.
"""

from __future__ import annotations

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncConnection

from app.errors import ApiError
from app.messenger.models import Upload
from app.ratelimit import RateLimiter

_uploads = Upload.__table__
DAY_SECONDS = 86400


async def unsent_bytes(conn: AsyncConnection, user_id: int) -> int:
    """The bytes of this user's uploads not (yet) sent with a message."""
    total = await conn.scalar(
        select(func.coalesce(func.sum(_uploads.c.size), 0)).where(
            _uploads.c.uploader_id == user_id, _uploads.c.message_id.is_(None)
        )
    )
    return int(total or 0)


def quota_exceeded(quota: int) -> ApiError:
    return ApiError(
        413,
        "upload_quota_exceeded",
        f"your unsent uploads may hold at most {quota} bytes; send or let some expire first",
    )


async def take_bytes(limiter: RateLimiter, user_id: int, size: int, per_day: int) -> float:
    """Take `size` bytes from the user's daily budget: 0.0 if allowed, else the seconds
    to wait. The limiter's buckets count hits and keep one timestamp each (GCRA), so a
    hit of `size` bytes is one hit at 1/size the rate and 1/size the burst: it moves
    the timestamp on by size bytes' worth, and is allowed while that leaves the day's
    budget. The burst rounds down to whole hits of this size, so the budget may hold up
    to one upload less; a file larger than the whole budget never passes."""
    if size <= 0:
        return 0.0
    return await limiter.hit(
        f"upload-bytes:{user_id}", per_day / DAY_SECONDS / size, per_day // size
    )
