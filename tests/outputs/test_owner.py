"""The owner file of a local output folder: one journal, one campaign (issue 30)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from stagefakes import memory_ledger

from apixo_batch.clock import FakeClock
from apixo_batch.errors import PathError
from apixo_batch.location import S3Location
from apixo_batch.outputs.owner import OWNER_FILE, Owner, claim_folder, read_owner
from apixo_batch.pipeline.owner import own_output

ME = Owner("id-a", "/data/a.sqlite", "spring")


def test_a_new_folder_is_bound_whole_to_its_first_run(tmp_path: Path) -> None:
    folder = tmp_path / "out" / "deep"
    lock = claim_folder(folder, ME)
    try:
        doc = json.loads((folder / OWNER_FILE).read_text())
        assert doc == {"journal_id": "id-a", "journal": "/data/a.sqlite", "campaign": "spring"}
        assert read_owner(folder) == ME
        assert [p.name for p in folder.iterdir()] == [OWNER_FILE]  # no temporary left
    finally:
        lock.release()
    # The same journal and campaign again: bound already, the file unchanged.
    before = os.stat(folder / OWNER_FILE).st_ino
    claim_folder(folder, ME).release()
    assert os.stat(folder / OWNER_FILE).st_ino == before


def test_runners_of_one_pid_racing_for_a_new_folder_bind_it_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Runners in containers sharing a mount all run as pid 1: a second one binding the
    folder while the first is between writing its file and linking it must not empty
    or take away the first one's file (it did: a temporary named by the pid, truncated
    by the other, linked empty: "owner file damaged", exit 2, 3 of 8 runners)."""
    folder = tmp_path / "out"
    monkeypatch.setattr(os, "getpid", lambda: 1)
    real_link = os.link
    raced: list[bool] = []

    def link(src: str | Path, dst: str | Path) -> None:
        if not raced:
            raced.append(True)
            # The other runner, pid 1 too, opens its temporary as a pid-named one would be.
            os.close(os.open(other, os.O_WRONLY | os.O_CREAT | os.O_TRUNC))
        real_link(src, dst)

    other = folder / f"{OWNER_FILE}.1.tmp"
    monkeypatch.setattr(os, "link", link)
    claim_folder(folder, ME, shared=True).release()
    other.unlink(missing_ok=True)  # the other runner's, gone with it
    assert raced and read_owner(folder) == ME
    assert [p.name for p in folder.iterdir()] == [OWNER_FILE]


def test_an_unbound_folder_has_no_owner(tmp_path: Path) -> None:
    assert read_owner(tmp_path) is None


def test_another_journal_is_refused_naming_the_owner_and_what_to_do(tmp_path: Path) -> None:
    claim_folder(tmp_path, ME).release()
    with pytest.raises(PathError) as got:
        claim_folder(tmp_path, Owner("id-b", "/data/b.sqlite", "spring"))
    message = str(got.value)
    assert "/data/a.sqlite" in message and "'spring'" in message
    assert "--out" in message and "--state /data/a.sqlite" in message
    assert "not to the journal /data/b.sqlite" in message
    assert read_owner(tmp_path) == ME  # never overwritten


def test_another_campaign_is_refused(tmp_path: Path) -> None:
    claim_folder(tmp_path, ME).release()
    with pytest.raises(PathError, match=r"campaign 'spring'.*not to 'autumn'"):
        claim_folder(tmp_path, Owner("id-a", "/data/a.sqlite", "autumn"))


def test_a_folder_held_by_a_run_is_refused_while_held(tmp_path: Path) -> None:
    held = claim_folder(tmp_path, ME)
    try:
        with pytest.raises(PathError, match="another apixo-batch run is using"):
            claim_folder(tmp_path, ME)
    finally:
        held.release()
    claim_folder(tmp_path, ME).release()  # freed with the run


def test_a_damaged_owner_file_is_one_line(tmp_path: Path) -> None:
    (tmp_path / OWNER_FILE).write_text("{not json")
    with pytest.raises(PathError, match="is damaged"):
        claim_folder(tmp_path, ME)


async def test_a_journal_keeps_one_campaign_and_one_identity(tmp_path: Path) -> None:
    ledger = await memory_ledger(FakeClock())
    journal = tmp_path / "j.sqlite"
    lock = await own_output(ledger, "spring", tmp_path / "out", journal)
    assert lock is not None
    lock.release()
    owner = read_owner(tmp_path / "out")
    assert owner is not None and owner.journal_id == await ledger.identity()
    assert owner.journal == str(journal) and owner.campaign == "spring"
    with pytest.raises(PathError, match="is for the campaign 'spring', not 'autumn'"):
        await own_output(ledger, "autumn", tmp_path / "other", journal)
    assert not (tmp_path / "other").exists()
    # Object storage keeps its own rule: no owner file, the campaign still checked.
    assert await own_output(ledger, "spring", S3Location("b", "p/"), journal) is None


async def test_a_folder_filled_before_owner_files_belongs_to_the_journal_in_it(
    tmp_path: Path,
) -> None:
    folder = tmp_path / "out"
    folder.mkdir()
    (folder / ".apixo-batch.sqlite").write_bytes(b"")  # an earlier version's journal
    ledger = await memory_ledger(FakeClock())
    with pytest.raises(PathError, match=r"holds the journal .*\.apixo-batch\.sqlite"):
        await own_output(ledger, "spring", folder, tmp_path / "other.sqlite")
    assert read_owner(folder) is None
    # That journal itself goes on, and binds the folder now.
    lock = await own_output(ledger, "spring", folder, folder / ".apixo-batch.sqlite")
    assert lock is not None
    lock.release()
    owner = read_owner(folder)
    assert owner is not None and owner.journal == str(folder / ".apixo-batch.sqlite")
