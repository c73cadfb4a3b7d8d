"""What the CLI reads from the environment: the key (or a key file) and the API's URL."""

from __future__ import annotations

from pathlib import Path

import pytest

from apixo_batch.apixo.secret import ApiKey
from apixo_batch.cli.environment import (
    GRACE_VAR,
    LEASE_VAR,
    base_url,
    load_api_key,
    load_api_keys,
    redact_env,
    runner_lease,
)
from apixo_batch.defaults import DEFAULT_BASE_URL

KEY = "sk-live-QX7distinctive-never-print-4242"


def test_load_api_key_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """APIXO_API_KEY is read (and stripped) when no key file is given."""
    monkeypatch.setenv("APIXO_API_KEY", f" {KEY} ")
    key = load_api_key()
    assert key is not None
    assert key.reveal() == KEY


def test_load_api_key_from_a_named_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    """The variable name can be chosen."""
    monkeypatch.setenv("OTHER_KEY_VAR", KEY)
    key = load_api_key(env="OTHER_KEY_VAR")
    assert key == ApiKey(KEY)


@pytest.mark.parametrize("value", [None, "", "  "])
def test_load_api_key_missing_is_none(monkeypatch: pytest.MonkeyPatch, value: str | None) -> None:
    """No (or a blank) variable and no file: None, for the CLI to report."""
    if value is None:
        monkeypatch.delenv("APIXO_API_KEY", raising=False)
    else:
        monkeypatch.setenv("APIXO_API_KEY", value)
    assert load_api_key() is None


def test_load_api_key_from_file(tmp_path: Path) -> None:
    """--api-key-file is read as text, its trailing newline dropped."""
    path = tmp_path / "apixo.key"
    path.write_text(KEY + "\n", encoding="utf-8")
    key = load_api_key(path)
    assert key is not None
    assert key.reveal() == KEY
    assert load_api_key(str(path)) == key


def test_key_file_wins_over_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An explicit key file takes precedence over the environment."""
    monkeypatch.setenv("APIXO_API_KEY", "sk-from-env")
    path = tmp_path / "apixo.key"
    path.write_text(KEY, encoding="utf-8")
    assert load_api_key(path) == ApiKey(KEY)


def test_empty_key_file_is_refused(tmp_path: Path) -> None:
    """A key file holding only whitespace is an error."""
    path = tmp_path / "apixo.key"
    path.write_text("\n", encoding="utf-8")
    with pytest.raises(ValueError, match="empty"):
        load_api_key(path)


def test_base_url_flag_then_environment_then_the_real_api(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """--base-url wins over APIXO_BASE_URL; neither (or a blank variable): the real API."""
    monkeypatch.setenv("APIXO_BASE_URL", "http://127.0.0.1:8787/api/v1")
    assert base_url("http://flag.example/api/v1") == "http://flag.example/api/v1"
    assert base_url(None) == "http://127.0.0.1:8787/api/v1"
    monkeypatch.setenv("APIXO_BASE_URL", "")
    assert base_url(None) == DEFAULT_BASE_URL
    monkeypatch.delenv("APIXO_BASE_URL")
    assert base_url(None) == DEFAULT_BASE_URL


def test_redact_env_masks_the_environments_key(monkeypatch: pytest.MonkeyPatch) -> None:
    """Where no ApiKey is at hand (an unexpected error), the environment's key is masked."""
    monkeypatch.setenv("APIXO_API_KEY", KEY)
    assert redact_env(f"boom near {KEY}") == "boom near ***"
    monkeypatch.delenv("APIXO_API_KEY")
    assert redact_env(f"boom near {KEY}") == f"boom near {KEY}"


# --- key pools ---------------------------------------------------------------------------


def test_several_keys_from_the_environment_comma_separated(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("APIXO_API_KEY", f"{KEY}, sk-second ,,{KEY}")
    keys = load_api_keys()
    assert [k.key.reveal() for k in keys] == [KEY, "sk-second"]
    assert load_api_key() == ApiKey(KEY)  # the first: what one-key callers get


def test_repeated_key_files_add_up(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Every --api-key-file's keys, in order; the environment is then not read."""
    monkeypatch.setenv("APIXO_API_KEY", "sk-from-env")
    first, second = tmp_path / "a.txt", tmp_path / "b.txt"
    first.write_text(f"{KEY} max_concurrent=5\n", encoding="utf-8")
    second.write_text("# project B\nsk-b rpm=100\n", encoding="utf-8")
    keys = load_api_keys([first, second])
    assert [(k.key.reveal(), k.max_concurrent, k.rpm) for k in keys] == [
        (KEY, 5, None),
        ("sk-b", None, 100),
    ]


def test_a_key_file_of_only_comments_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "keys.txt"
    path.write_text("# none yet\n\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"keys.txt: no API key in it"):
        load_api_keys(path)


def test_redact_env_masks_every_key_of_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("APIXO_API_KEY", f"{KEY},sk-second-secret")
    assert redact_env(f"x {KEY} y sk-second-secret") == "x *** y ***"


def test_a_runners_lease_defaults_and_its_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    """30 s lease, 35 s grace; $APIXO_BATCH_LEASE_S scales the grace with it unless
    $APIXO_BATCH_GRACE_S says; a value that is no number of seconds is one ValueError
    naming the variable."""
    monkeypatch.delenv(LEASE_VAR, raising=False)
    monkeypatch.delenv(GRACE_VAR, raising=False)
    assert runner_lease() == (30.0, 35.0)
    monkeypatch.setenv(LEASE_VAR, "3")
    assert runner_lease() == pytest.approx((3.0, 3.5))
    monkeypatch.setenv(GRACE_VAR, "1.5")
    assert runner_lease() == (3.0, 1.5)
    for bad in ("0", "-2", "soon", "inf", "nan"):
        monkeypatch.setenv(LEASE_VAR, bad)
        with pytest.raises(ValueError, match=r"\$APIXO_BATCH_LEASE_S"):
            runner_lease()
