"""Guarded stdout and stderr: a reader that goes away ends no command."""

from __future__ import annotations

import errno
import io
import os
import signal
import sys

import pytest

from apixo_batch.cli.terminal import (
    GuardedStream,
    guarded_streams,
    note_when_stdout_closes,
    stop_signals,
)


class _Failing(io.StringIO):
    """A stream whose writes fail with ``err`` once ``broken`` is set."""

    def __init__(self, err: int) -> None:
        super().__init__()
        self.err = err
        self.broken = False

    def write(self, text: str) -> int:
        if self.broken:
            raise OSError(self.err, os.strerror(self.err))
        return super().write(text)


@pytest.mark.parametrize("err", [errno.EPIPE, errno.EIO])
def test_a_gone_reader_drops_later_writes_and_the_note_is_said_once(
    err: int, capsys: pytest.CaptureFixture[str]
) -> None:
    """EPIPE (a pipe's reader gone) or EIO (a terminal hung up): the write is dropped, as
    are the ones after it; the note, if any, is said once on stderr."""
    inner = _Failing(err)
    guarded = GuardedStream(inner, "stdout")  # type: ignore[arg-type]
    guarded.note = "stdout was closed: the run goes on"
    assert guarded.write("first\n") == 6
    inner.broken = True
    assert guarded.write("second\n") == 7
    assert guarded.gone
    inner.broken = False  # even a stream that would take it again gets nothing more
    guarded.write("third\n")
    guarded.flush()
    assert inner.getvalue() == "first\n"
    assert capsys.readouterr().err == "apixo-batch: stdout was closed: the run goes on\n"


def test_other_write_errors_are_not_hidden() -> None:
    """A full disk under a redirected stdout is not a reader gone: it is raised."""
    inner = _Failing(errno.ENOSPC)
    inner.broken = True
    guarded = GuardedStream(inner, "stdout")  # type: ignore[arg-type]
    with pytest.raises(OSError, match="No space"):
        guarded.write("x")
    assert not guarded.gone


def test_what_is_buffered_for_a_closed_pipe_goes_nowhere_at_the_last_flush() -> None:
    """A real pipe whose reader closed: the failed flush points the descriptor at
    /dev/null, so the flush that comes later (the interpreter's, at exit) succeeds."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    stream = os.fdopen(write_end, "w", encoding="utf-8")
    try:
        guarded = GuardedStream(stream, "stdout")
        guarded.write("a line nobody reads\n")
        guarded.flush()
        assert guarded.gone
        stream.write("buffered after\n")
        stream.flush()  # /dev/null takes it: no BrokenPipeError
        assert os.path.samestat(os.fstat(write_end), os.stat(os.devnull))
    finally:
        stream.close()


def test_the_guard_is_put_back_and_delegates_what_it_does_not_guard(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Inside: sys.stdout is guarded (and answers isatty as the stream does); after: the
    streams are the ones before, and a note set inside does not outlive it."""
    before = sys.stdout, sys.stderr
    with guarded_streams():
        assert isinstance(sys.stdout, GuardedStream) and isinstance(sys.stderr, GuardedStream)
        assert sys.stdout.isatty() is before[0].isatty()
        note_when_stdout_closes("gone")
        with guarded_streams():  # nested (main() called from main()): not wrapped twice
            assert isinstance(sys.stdout, GuardedStream)
            assert not isinstance(sys.stdout.wrapped, GuardedStream)
        print("shown")
    assert (sys.stdout, sys.stderr) == before
    assert capsys.readouterr().out == "shown\n"


def test_sighup_stops_a_run_unless_it_is_ignored() -> None:
    """SIGHUP is a stop signal like SIGTERM, unless ignored (nohup): then it stays so."""
    previous = signal.signal(signal.SIGHUP, signal.SIG_DFL)
    try:
        assert stop_signals() == (signal.SIGTERM, signal.SIGHUP)
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        assert stop_signals() == (signal.SIGTERM,)
    finally:
        signal.signal(signal.SIGHUP, previous)
