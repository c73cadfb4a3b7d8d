"""What a run needs to survive its terminal: stdout and stderr that outlive their
readers, and the signals that stop it as Ctrl-C does.

``apixo-batch run --json | head -5``, a log shipper that dies, an SSH session that
drops: the reader of a stream goes away, and the next write fails (EPIPE; EIO on a
terminal that hung up). A paid run must not die of it: the journal and the files hold
every event, the terminal only shows them. So while :func:`guarded_streams` is on,
the first failed write of a stream points its descriptor at ``/dev/null`` (what is
still buffered, and the interpreter's last flush, then go nowhere instead of failing
again at exit) and every later write to it is dropped. A command may leave a note
to be said on stderr when stdout goes (:func:`note_when_stdout_closes`): a run says
it goes on; ``status | head`` just ends quietly.
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import sys
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any, TextIO

__all__ = ["GuardedStream", "guarded_streams", "note_when_stdout_closes", "stop_signals"]

#: a write that fails because nobody reads any more (EIO: a terminal that hung up)
_READER_GONE = frozenset({errno.EPIPE, errno.EIO})


class GuardedStream:
    """A text stream whose writes stop failing once its reader is gone.

    Anything else the stream is asked (``isatty``, ``fileno``, ``encoding``…) is the
    wrapped stream's answer, so rich and ``print`` use it as they would the stream."""

    def __init__(self, stream: TextIO, name: str) -> None:
        self.wrapped = stream
        self.name = name
        #: its reader went away: writes are dropped
        self.gone = False
        #: said on stderr when it goes (stdout only)
        self.note: str | None = None

    def write(self, text: str) -> int:
        if not self.gone:
            try:
                return self.wrapped.write(text)
            except OSError as exc:
                self._reader_gone(exc)
        return len(text)

    def writelines(self, lines: Iterable[str]) -> None:
        for line in lines:
            self.write(line)

    def flush(self) -> None:
        if not self.gone:
            try:
                self.wrapped.flush()
            except OSError as exc:
                self._reader_gone(exc)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.wrapped, name)

    def _reader_gone(self, exc: OSError) -> None:
        if exc.errno not in _READER_GONE:
            raise exc
        self.gone = True
        # What the stream still buffers would fail again at every flush, the last one at
        # exit too ("Exception ignored ... BrokenPipeError", exit 120): let it go nowhere.
        with contextlib.suppress(OSError, ValueError, AttributeError):
            devnull = os.open(os.devnull, os.O_WRONLY)
            try:
                os.dup2(devnull, self.wrapped.fileno())
            finally:
                os.close(devnull)
        if self.note is not None:
            print(f"apixo-batch: {self.note}", file=sys.stderr, flush=True)


@contextmanager
def guarded_streams() -> Iterator[None]:
    """``sys.stdout`` and ``sys.stderr`` guarded for the body; put back after it, flushed
    first so that nothing fails at exit."""
    out, err = sys.stdout, sys.stderr
    guarded_out = out if isinstance(out, GuardedStream) else GuardedStream(out, "stdout")
    guarded_err = err if isinstance(err, GuardedStream) else GuardedStream(err, "stderr")
    try:
        sys.stdout, sys.stderr = guarded_out, guarded_err
        yield
    finally:
        guarded_out.flush()
        guarded_err.flush()
        sys.stdout, sys.stderr = out, err


def note_when_stdout_closes(note: str) -> None:
    """Say ``note`` on stderr if stdout's reader goes away from now on (once)."""
    if isinstance(sys.stdout, GuardedStream):
        sys.stdout.note = note


def stop_signals() -> tuple[signal.Signals, ...]:
    """The signals that stop a run as Ctrl-C does: SIGTERM, and SIGHUP (the terminal or
    SSH session gone) unless it is ignored, as ``nohup`` leaves it to say "keep going"."""
    hangup = getattr(signal, "SIGHUP", None)
    if hangup is None or signal.getsignal(hangup) is signal.SIG_IGN:
        return (signal.SIGTERM,)
    return (signal.SIGTERM, hangup)
