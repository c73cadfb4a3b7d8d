"""Make the simulator's playable result clips: H.264 in MP4, one per duration and aspect ratio.

The simulator serves each result as one of these clips, padded with a ``free`` box to the
configured file size with bytes of its own per task (apixo_batch/simulator/media.py), so
that players, browsers and decoders can open what it serves while Range requests,
resumes and checksums keep working. The clips are made once, here, and shipped with the
package: the simulator needs no video library, and its bytes are the same everywhere.
PyAV (the dev extra) makes them:

    .venv/bin/python scripts/make_clips.py      # writes apixo_batch/simulator/clips/*.mp4
"""

from __future__ import annotations

import colorsys
import sys
from fractions import Fraction
from pathlib import Path

import av

OUT = Path(__file__).resolve().parent.parent / "apixo_batch" / "simulator" / "clips"
FPS = 12
#: small frames: the point is a file every player opens, not a picture
SIZES = {"16x9": (128, 72), "9x16": (72, 128), "1x1": (96, 96)}
DURATIONS = (5, 10)


def frame(n: int, width: int, height: int, total: int) -> av.VideoFrame:
    """A hue that turns over the clip and a white bar that crosses it: motion to see."""
    r, g, b = colorsys.hsv_to_rgb(n / total, 0.6, 0.9)
    x = int((width - 8) * n / max(1, total - 1))
    colour = bytes((int(r * 255), int(g * 255), int(b * 255)))
    row = colour * x + b"\xff" * 24 + colour * (width - x - 8)
    video = av.VideoFrame(width, height, "rgb24")
    plane = video.planes[0]
    pad = b"\0" * (plane.line_size - len(row))
    plane.update((row + pad) * height)
    return video


def make(path: Path, seconds: int, width: int, height: int) -> None:
    total = seconds * FPS
    with av.open(str(path), mode="w", options={"movflags": "+faststart"}) as out:
        stream = out.add_stream("libx264", rate=FPS)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        # One thread and fixed settings: the same bytes on every run of this script.
        stream.options = {"crf": "32", "preset": "medium", "threads": "1", "g": str(FPS * 2)}
        stream.codec_context.time_base = Fraction(1, FPS)
        for n in range(total):
            video = frame(n, width, height, total)
            video.pts = n
            for packet in stream.encode(video):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)


def main() -> int:
    OUT.mkdir(parents=True, exist_ok=True)
    for name, (width, height) in SIZES.items():
        for seconds in DURATIONS:
            path = OUT / f"{seconds}s-{name}.mp4"
            make(path, seconds, width, height)
            print(f"{path.relative_to(OUT.parent.parent.parent)}: {path.stat().st_size:,} bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
