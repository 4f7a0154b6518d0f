from __future__ import annotations

import logging

import pytest

from fnnp_opt.redact import RedactingFilter, redact, scrub


@pytest.mark.parametrize(
    "url, shown",
    [
        (
            "postgresql+psycopg2://user:Pa55@db.example:5432/studies",
            "postgresql+psycopg2://user:***@db.example:5432/studies",
        ),
        ("mysql://u:p%40ss@127.0.0.1/x", "mysql://u:***@127.0.0.1/x"),
        ("postgresql://:only-pw@host/db", "postgresql://:***@host/db"),
        ("postgresql://user@host/db", "postgresql://user@host/db"),  # no password: unchanged
        ("postgresql://u:p@SECRETPW@127.0.0.1:1/x", "postgresql://u:***@127.0.0.1:1/x"),  # an unescaped '@'
        ("postgresql://u@127.0.0.1:1/x?password=SECRETPW", "postgresql://u@127.0.0.1:1/x?password=***"),
        ("postgresql://u@h/x?sslmode=off&password=S3&x=1", "postgresql://u@h/x?sslmode=off&password=***&x=1"),
        ("sqlite:///studies/fnnp.db", "sqlite:///studies/fnnp.db"),
    ],
)
def test_redact_masks_exactly_the_password(url, shown):
    assert redact(url) == shown
    assert redact(f"storage {url!r} could not be opened") == f"storage {shown!r} could not be opened"


def test_scrub_removes_a_password_that_appears_alone():
    url = "postgresql://fnnp:p%40ss-9@127.0.0.1/db"
    text = 'password "p@ss-9" rejected for p%40ss-9 at postgresql://fnnp:p%40ss-9@127.0.0.1/db'
    assert scrub(text, url) == 'password "***" rejected for *** at postgresql://fnnp:***@127.0.0.1/db'


def test_a_short_password_does_not_blank_out_other_words():
    url = "postgresql://u:p@h/db"
    assert scrub("(psycopg2.OperationalError) p rejected", url) == "(psycopg2.OperationalError) *** rejected"


def test_log_records_are_redacted(caplog):
    log = logging.getLogger("fnnp_opt.test_redact")
    log.addFilter(RedactingFilter())
    try:
        with caplog.at_level(logging.INFO, logger="fnnp_opt.test_redact"):
            log.info("opening %s", "postgresql://u:hunter2@h/db")
    finally:
        log.filters.clear()
    assert "hunter2" not in caplog.text and "postgresql://u:***@h/db" in caplog.text


def test_any_secret_query_parameter_and_an_unescaped_at_are_masked():
    assert redact("postgresql://u@h/db?sslpassword=S3cr3t&x=1") == "postgresql://u@h/db?sslpassword=***&x=1"
    assert redact("x://h/db?client_secret=abc&access_token=def") == "x://h/db?client_secret=***&access_token=***"
    url = "postgresql://u:S3cr3t@Tail9@127.0.0.1:1/db"  # libpq reads password 'S3cr3t', host 'Tail9@127.0.0.1'
    shown = scrub(f'could not translate host name "Tail9@127.0.0.1" to address ({url})', url)
    assert "S3cr3t" not in shown and "Tail9" not in shown and "127.0.0.1" in shown


@pytest.mark.parametrize("password", ["pa/ss", "hunter2 x", "p@ss/w rd"])
def test_a_password_with_a_slash_a_space_or_an_at_is_masked_in_the_url_and_in_messages(password):
    from fnnp_opt.redact import redact_url

    url = f"postgresql://bob:{password}@127.0.0.1:1/db"
    assert redact_url(url) == "postgresql://bob:***@127.0.0.1:1/db"
    assert password not in scrub(f"connection for bob:{password} failed ({password})", url)
