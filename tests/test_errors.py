"""The error tree: api_error_for's mapping and what each leaf carries."""

from __future__ import annotations

import pytest

from apixo_batch.errors import (
    ApiError,
    ApixoError,
    AuthError,
    DownloadError,
    FieldIssue,
    Forbidden,
    InsufficientBalance,
    IntegrityError,
    InvalidRequest,
    JobFileError,
    JournalError,
    NotFound,
    RateLimited,
    ResultExpired,
    ServerError,
    TransportError,
    api_error_for,
)


@pytest.mark.parametrize(
    ("status", "message", "leaf"),
    [
        (400, "Invalid parameters or request error", InvalidRequest),
        (400, "Insufficient credits", InsufficientBalance),
        (400, "INSUFFICIENT balance", InsufficientBalance),
        (401, "Invalid or missing API Key", AuthError),
        (402, "Insufficient balance or quota", InsufficientBalance),
        (402, "", InsufficientBalance),
        (403, "content was rejected", Forbidden),
        (404, "task not found", NotFound),
        (409, "conflict", InvalidRequest),
        (422, "unprocessable", InvalidRequest),
        (429, "Rate limit exceeded", RateLimited),
        (500, "Server error", ServerError),
        (502, "Upstream provider error", ServerError),
        (503, "unavailable", ServerError),
        (504, "Upstream timeout", ServerError),
        (302, "moved", ServerError),
        (100, "continue", ServerError),
    ],
)
def test_api_error_for_maps_status_and_message_to_leaf(
    status: int, message: str, leaf: type[ApiError]
) -> None:
    """Each documented code, and the 400 "Insufficient credits" body, get their own leaf."""
    err = api_error_for(status, message, endpoint="submit")
    assert type(err) is leaf
    assert (err.status, err.api_message, err.endpoint) == (status, message, "submit")


@pytest.mark.parametrize(
    ("leaf", "fatal", "retryable"),
    [
        (InvalidRequest, False, False),
        (AuthError, True, False),
        (InsufficientBalance, True, False),
        (Forbidden, True, False),
        (NotFound, False, False),
        (RateLimited, False, True),
        (ServerError, False, True),
    ],
)
def test_api_error_leaves_say_whether_fatal_or_retryable(
    leaf: type[ApiError], fatal: bool, retryable: bool
) -> None:
    """fatal stops submits for the account; retryable means try the same call later."""
    err = leaf(500, "x")
    assert (err.fatal, err.retryable) == (fatal, retryable)


def test_other_errors_retryable_flags() -> None:
    """Transport trouble and downloads retry; an expired URL or a bad job file does not."""
    assert TransportError("reset").retryable
    assert DownloadError("short").retryable
    assert IntegrityError("not an mp4").retryable
    assert not ResultExpired("gone").retryable
    assert not JobFileError([]).retryable
    assert not JournalError("locked").retryable


def test_every_error_is_an_apixo_error() -> None:
    """One base class catches everything raised on purpose."""
    for leaf in (ApiError, JobFileError, TransportError, DownloadError, JournalError):
        assert issubclass(leaf, ApixoError)
    assert issubclass(ResultExpired, DownloadError)
    assert issubclass(IntegrityError, DownloadError)
    assert issubclass(RateLimited, ApiError)


def test_api_error_message_names_status_and_endpoint() -> None:
    """str(err) says the status, where it happened and what APIXO said."""
    err = api_error_for(403, "no access to kling-2-6", endpoint="submit")
    assert str(err) == "APIXO 403 (submit): no access to kling-2-6"
    assert str(api_error_for(500, "boom")) == "APIXO 500: boom"


def test_rate_limited_carries_retry_after() -> None:
    """Retry-After reaches the RateLimited leaf; other leaves ignore it."""
    err = api_error_for(429, "slow down", retry_after=12.5)
    assert isinstance(err, RateLimited)
    assert err.retry_after == 12.5
    assert isinstance(api_error_for(503, "busy", retry_after=3), ServerError)


def test_rate_limited_retry_after_defaults_to_none() -> None:
    """Without Retry-After the caller's backoff decides."""
    err = api_error_for(429, "slow down")
    assert isinstance(err, RateLimited)
    assert err.retry_after is None


def test_field_issue_names_where_and_field() -> None:
    """A FieldIssue reads as 'where field 'x': message'; the field part is optional."""
    assert str(FieldIssue("job 'drone-snow'", "input.duration", "got 7")) == (
        "job 'drone-snow' field 'input.duration': got 7"
    )
    assert str(FieldIssue("line 7", "", "not a mapping")) == "line 7: not a mapping"


def test_job_file_error_lists_every_issue() -> None:
    """The message counts the problems and lists each on its own line."""
    issues = [
        FieldIssue("job 'a'", "input.prompt", "required"),
        FieldIssue("job 'b'", "id", "duplicate"),
    ]
    err = JobFileError(issues, source="jobs/campaign.yaml")
    assert err.issues == tuple(issues)
    assert str(err).splitlines() == [
        "jobs/campaign.yaml: 2 problems found",
        "  - job 'a' field 'input.prompt': required",
        "  - job 'b' field 'id': duplicate",
    ]


def test_job_file_error_singular_without_source() -> None:
    """One problem reads '1 problem found', with no source prefix when none is given."""
    err = JobFileError([FieldIssue("job 'a'", "model", "unknown")])
    assert str(err).splitlines()[0] == "1 problem found"


def test_a_connection_that_could_not_be_made_is_told_in_plain_words() -> None:
    """aiohttp's "Cannot connect to host h:p ssl:default [Connect call failed (…)]"
    becomes "cannot connect to h:p (connection refused)"; other errors keep their type."""
    import socket

    import aiohttp
    from aiohttp.client_reqrep import ConnectionKey

    from apixo_batch.errors import connection_trouble

    key = ConnectionKey("127.0.0.1", 8799, False, True, None, None, None)
    refused = aiohttp.ClientConnectorError(key, ConnectionRefusedError(111, "refused"))
    assert "ssl:default" in str(refused)  # what people read before
    assert connection_trouble(refused) == "cannot connect to 127.0.0.1:8799 (connection refused)"
    unknown = aiohttp.ClientConnectorError(key, socket.gaierror(-2, "Name or service not known"))
    assert connection_trouble(unknown) == "cannot connect to 127.0.0.1:8799 (name not resolved)"
    assert connection_trouble(TimeoutError()) == "TimeoutError"
    reset = aiohttp.ClientConnectionError("Connection reset by peer")
    assert connection_trouble(reset) == "ClientConnectionError: Connection reset by peer"
