"""Passwords in storage URLs never reach the screen, a log, a study or an export.

A storage URL such as ``postgresql+psycopg2://user:PASSWORD@host:5432/db`` is shown as
``postgresql+psycopg2://user:***@host:5432/db`` wherever fnnp-opt shows, logs or stores it.
The URL itself is only ever handed to SQLAlchemy.
"""

from __future__ import annotations

import logging
import re
from urllib.parse import unquote

# scheme://user:password@host -- the password runs from the first ':' after '//' to the last '@' of the
# authority (a password may hold an unescaped '@'); and ?password=... / &password=... in the query
_USERINFO = re.compile(r"(?P<head>://[^:/@\s]*):(?P<password>[^\s]*)@")
_QUERY = re.compile(
    r"(?P<head>[?&]\w*(?:password|passwd|pwd|secret|token)\w*=)(?P<password>[^&\s'\"]*)", re.IGNORECASE
)  # password=, sslpassword=, client_secret=, access_token= ...


def redact(text: str) -> str:
    """``text`` with the password of every URL in it shown as ``***``; text without one is unchanged."""
    text = _USERINFO.sub(lambda m: f"{m['head']}:***@", text)
    return _QUERY.sub(lambda m: f"{m['head']}***", text)


def _url_password(url: str) -> str | None:
    """The password of storage ``url`` as a driver splits it: after the user's ':' up to the last '@' before the
    query, whatever it holds ('/', '@', spaces)."""
    _, sep, rest = url.partition("://")
    userinfo, at, _ = rest.split("?", 1)[0].rpartition("@")
    password = userinfo.partition(":")[2] if sep and at else ""
    return password or None


def redact_url(url: str) -> str:
    """Storage ``url`` with its password shown as ``***``, also one that :func:`redact`'s patterns cannot find in
    free text (a password holding a space)."""
    password = _url_password(url)
    if password is not None:
        url = url.replace(f":{password}@", ":***@", 1)
    return redact(url)


def scrub(text: str, url: str) -> str:
    """``text`` (an error message, say) with the password of ``url`` replaced by ``***`` wherever it appears,
    in the URL or on its own (raw or percent-decoded)."""
    secrets = [m["password"] for rx in (_USERINFO, _QUERY) for m in rx.finditer(url) if m["password"]]
    secrets += [s for s in [_url_password(url)] if s]
    # a password holding an unescaped '@' is split there by the driver, which may then show its tail as a host
    pieces = [p for s in secrets for p in s.split("@") if len(p) >= 3] if any("@" in s for s in secrets) else []
    for secret in {v for s in [*secrets, *pieces] for v in (s, unquote(s))}:
        # whole tokens only: a short password must not blank out letters of other words
        text = re.sub(rf"(?<![\w]){re.escape(secret)}(?![\w])", "***", text)
    return redact(text)


class RedactingFilter(logging.Filter):
    """A logging filter that redacts URL passwords from every record's message."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        clean = redact(message)
        if clean != message:
            record.msg, record.args = clean, None
        return True
