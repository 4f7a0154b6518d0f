"""Passwords in storage URLs never reach the screen, a log, a study or an export.

A storage URL such as ``postgresql+psycopg2://user:PASSWORD@host:5432/db`` is shown as
``postgresql+psycopg2://user:***@host:5432/db`` wherever fnnp-opt shows, logs or stores it.
The URL itself is only ever handed to SQLAlchemy.
"""

from __future__ import annotations

import logging
import re
from urllib.parse import unquote

# scheme://user:password@ -- the password is everything between the first ':' after '//' and the '@'
_USERINFO = re.compile(r"(?P<head>://[^:/@\s]*):(?P<password>[^@/\s]*)@")


def redact(text: str) -> str:
    """``text`` with the password of every URL in it shown as ``***``; text without one is unchanged."""
    return _USERINFO.sub(lambda m: f"{m['head']}:***@", text)


def scrub(text: str, url: str) -> str:
    """``text`` (an error message, say) with the password of ``url`` replaced by ``***`` wherever it appears,
    in the URL or on its own (raw or percent-decoded)."""
    m = _USERINFO.search(url)
    if m and m["password"]:
        for secret in {m["password"], unquote(m["password"])}:
            text = text.replace(secret, "***")
    return redact(text)


class RedactingFilter(logging.Filter):
    """A logging filter that redacts URL passwords from every record's message."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        clean = redact(message)
        if clean != message:
            record.msg, record.args = clean, None
        return True
