"""Report periods as instants: what ``--since`` / ``--until`` mean.

Accepted: ISO 8601 date-times with a zone (``2026-12-02T04:40+01:00``, ``…Z``); without a
zone they are read as UTC; dates (``2026-12-02``: that day's 00:00 UTC); ``now``, ``today``,
``yesterday``; and ages (``7d``, ``12h``, ``30m``, ``2w``: that long before now). Every
bound is normalised to UTC and written as the audit log writes its times, so comparing
the stored text compares instants. Anything else is a `ConfigError` (a usage error).
"""

from __future__ import annotations

import re
from datetime import date, datetime, time, timedelta, timezone

from guard.errors import ConfigError

_AGE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$", re.IGNORECASE)
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}
FORMS = "an ISO 8601 date or date-time (2026-12-02, 2026-12-02T04:40+01:00), now, today, yesterday, or an age (7d, 12h)"


def instant(text: str, what: str = "--since", now: datetime | None = None) -> datetime:
    """``text`` as an aware UTC datetime."""
    now = now or datetime.now(timezone.utc)
    value = text.strip()
    lowered = value.lower()
    if lowered == "now":
        return now
    if lowered in ("today", "yesterday"):
        day = now.astimezone(timezone.utc).date() - timedelta(days=lowered == "yesterday")
        return datetime.combine(day, time(), timezone.utc)
    if m := _AGE.match(value):
        return now - timedelta(**{_UNITS[m.group(2).lower()]: float(m.group(1))})
    try:
        if re.fullmatch(r"\d{4}-\d{2}-\d{2}", value):
            return datetime.combine(date.fromisoformat(value), time(), timezone.utc)
        parsed = datetime.fromisoformat(value.replace("z", "Z"))
    except ValueError:
        raise ConfigError(f"{what} {text!r}: not a time; use {FORMS}") from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=timezone.utc)
    return parsed.astimezone(timezone.utc)


def stored(moment: datetime) -> str:
    """An instant as the audit log stores times (UTC, microseconds): comparable as text."""
    return moment.astimezone(timezone.utc).isoformat(timespec="microseconds")


def period(since: str | None, until: str | None, now: datetime | None = None) -> tuple[str | None, str | None]:
    """Both bounds normalised (``None`` stays open); ``since`` must not be after ``until``."""
    now = now or datetime.now(timezone.utc)
    start = instant(since, "--since", now) if since else None
    end = instant(until, "--until", now) if until else None
    if start and end and start > end:
        raise ConfigError(f"--since {since!r} is after --until {until!r} ({stored(start)} > {stored(end)})")
    return (stored(start) if start else None), (stored(end) if end else None)
