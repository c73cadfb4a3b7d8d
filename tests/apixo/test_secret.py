"""The API key never prints; redact masks it in any text."""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import pickle

import pytest

from apixo_batch.apixo.secret import ApiKey, KeySpec, parse_keys, redact, unique_keys

KEY = "sk-live-QX7distinctive-never-print-4242"


def test_str_repr_and_format_mask_the_key() -> None:
    """Every ordinary way of turning the key into text shows a mask."""
    key = ApiKey(KEY)
    renderings = [
        str(key),
        repr(key),
        format(key),
        format(key, ">60"),
        f"{key}",
        f"{key!r}",
        f"{key!s}",
        f"{key:s}",
        "%s" % key,  # noqa: UP031  (the old style must be safe too)
        "%r" % key,  # noqa: UP031
        "{}".format(key),  # noqa: UP032
        str([key]),
        str({"key": key}),
    ]
    for text in renderings:
        assert KEY not in text
        assert "***" in text


def test_logging_the_key_shows_a_mask(caplog: pytest.LogCaptureFixture) -> None:
    """Logging the key, by %s, %r or in a structure, never writes it."""
    log = logging.getLogger("apixo_batch.test")
    key = ApiKey(KEY)
    with caplog.at_level(logging.DEBUG, logger="apixo_batch.test"):
        log.info("key=%s", key)
        log.warning("key=%r", key)
        log.error("config %s", {"api_key": key})
    assert len(caplog.records) == 3
    assert KEY not in caplog.text


def test_pickling_is_refused() -> None:
    """The key cannot be pickled (and so not copied to disk or another process by accident)."""
    with pytest.raises(TypeError, match="pickled"):
        pickle.dumps(ApiKey(KEY))
    with pytest.raises(TypeError):
        copy.deepcopy(ApiKey(KEY))


def test_json_serialization_is_refused() -> None:
    """json.dumps refuses the key rather than writing it into a manifest or journal."""
    with pytest.raises(TypeError):
        json.dumps({"key": ApiKey(KEY)})


def test_no_instance_dict_exposes_the_value() -> None:
    """The key is slotted: vars() has nothing to print."""
    with pytest.raises(TypeError):
        vars(ApiKey(KEY))


def test_reveal_and_bearer_give_the_key() -> None:
    """Only reveal() and bearer() (for the Authorization header) give the value."""
    key = ApiKey(KEY)
    assert key.reveal() == KEY
    assert key.bearer() == f"Bearer {KEY}"


def test_key_is_stripped() -> None:
    """Surrounding whitespace (a key file's trailing newline) is not part of the key."""
    assert ApiKey(f"  {KEY}\n").reveal() == KEY


@pytest.mark.parametrize("value", ["", "   ", "\n"])
def test_empty_key_is_refused(value: str) -> None:
    """An empty or blank key is an error, not an anonymous request."""
    with pytest.raises(ValueError, match="empty"):
        ApiKey(value)


def test_equality_and_hash_follow_the_value() -> None:
    """Two keys with the same value are equal and hash alike; a string is not a key."""
    assert ApiKey(KEY) == ApiKey(KEY)
    assert hash(ApiKey(KEY)) == hash(ApiKey(KEY))
    assert ApiKey(KEY) != ApiKey(KEY + "x")
    assert ApiKey(KEY) != KEY


def test_redact_replaces_every_occurrence() -> None:
    """redact masks the key wherever it appears in a text."""
    text = f"Authorization: Bearer {KEY}; again {KEY}"
    assert redact(text, ApiKey(KEY)) == "Authorization: Bearer ***; again ***"


def test_redact_without_key_returns_text() -> None:
    """With no key there is nothing to hide."""
    assert redact("plain text", None) == "plain text"


# --- key pools: a key file of several keys, each named by its fingerprint ------------------


def test_a_key_file_holds_several_keys_with_comments_and_limits() -> None:
    """One key per line, comments and blank lines skipped, per-key limits after it."""
    text = (
        "# team keys\n\nsk-one max_concurrent=200 rpm=3000\n  sk-two   # project B\nsk-3 rpm=60\n"
    )
    keys = parse_keys(text, "keys.txt")
    assert [k.key.reveal() for k in keys] == ["sk-one", "sk-two", "sk-3"]
    assert [(k.max_concurrent, k.rpm) for k in keys] == [(200, 3000), (None, None), (None, 60)]


@pytest.mark.parametrize(
    ("line", "says"),
    [
        ("sk-one slots=3", "keys.txt line 2: unknown setting 'slots'"),
        ("sk-one rpm=0", "keys.txt line 2: rpm must be a whole number >= 1"),
        ("sk-one max_concurrent=lots", "keys.txt line 2: max_concurrent must be a whole number"),
    ],
)
def test_a_bad_key_file_line_is_named_never_the_key(line: str, says: str) -> None:
    with pytest.raises(ValueError, match=says) as caught:
        parse_keys(f"# keys\n{line}\n", "keys.txt")
    assert "sk-one" not in str(caught.value)


def test_fingerprint_is_eight_hex_of_the_sha256_and_never_the_key() -> None:
    spec = KeySpec(ApiKey("sk-secret-value"))
    assert spec.fingerprint == hashlib.sha256(b"sk-secret-value").hexdigest()[:8]
    assert "sk-secret" not in repr(spec)


def test_a_key_given_twice_counts_once() -> None:
    keys = parse_keys("sk-a rpm=10\nsk-b\nsk-a rpm=99\n", "k")
    assert [(k.key.reveal(), k.rpm) for k in unique_keys(keys)] == [("sk-a", 10), ("sk-b", None)]


def test_redact_masks_every_key_of_a_pool() -> None:
    keys = [ApiKey("sk-one-secret"), ApiKey("sk-two-secret")]
    assert redact("a sk-one-secret b sk-two-secret", keys) == "a *** b ***"
