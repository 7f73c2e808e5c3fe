"""Video files -> sampled frames, with PyAV (FFmpeg's demuxers and decoders).

Frames are taken at a rate (the first frame at or after each 1/fps step of presentation time),
keyframes only (the decoder is told to skip the others, so they cost nothing), or all of them. A
packet the decoder refuses becomes an error frame (one for a run of them up to the next frame kept,
saying how many); the frames around it still come out.
"""

from __future__ import annotations

import errno
import io
import math
import time
from dataclasses import dataclass
from typing import Optional

from PIL import Image

from imgclf_ray.imaging.limits import MAX_JPEG_SCANS, DecodeError, check_budget, jpeg_scans
from imgclf_ray.messages import describe


@dataclass
class VideoFrame:
    index: int  # the frame's number in the stream (see ``sample``)
    timestamp: float  # presentation time in seconds (NaN when the packet had none)
    image: Optional[Image.Image] = None  # RGB, shorter side at most ``short_side``
    size: tuple[int, int] = (0, 0)  # the frame's own (width, height)
    error: Optional[str] = None  # why this frame could not be decoded


def _scaled(width: int, height: int, short_side: Optional[int]) -> tuple[int, int]:
    """Shorter side brought down to ``short_side`` as the conditioning's resize computes it."""
    if not short_side or min(width, height) <= short_side:
        return width, height
    if width <= height:
        return short_side, int(short_side * height / width)
    return int(short_side * width / height), short_side


# The demuxers a video archive is read with (FFmpeg's names): MP4/MOV/M4V, Matroska/WebM, AVI,
# MPEG-TS and -PS, FLV, ASF/WMV, Ogg, raw H.264/HEVC/MPEG video.
DEMUXERS = ("mov", "matroska", "avi", "mpegts", "mpeg", "flv", "asf", "ogg", "h264", "hevc", "mpegvideo", "m4v")
CONTAINERS = "MP4/MOV, Matroska/WebM, AVI, MPEG-TS/PS, FLV, ASF, Ogg or raw H.264/HEVC/MPEG video"


_MP4_LEAVES = {b"mdat", b"free", b"skip", b"wide"}  # boxes whose bodies are no boxes (the media itself)


def _mp4_samples(data: bytes) -> int:
    """The most samples one sample table of an MP4/MOV file declares (stsz/stz2's count, stts's
    runs added up, a fragment's trun), wherever it sits (FFmpeg's mov demuxer reads a table inside
    any box: udta, tref, dinf ...); 0 for another container. The demuxer builds an index entry for
    each while the file opens: a 656-byte file declaring 85 million held 3 GB. A compressed movie
    header (cmov) would hide them: refused."""
    def boxes(start: int, end: int, depth: int):
        at = start
        while at + 8 <= end and depth < 8:
            size, kind, body = int.from_bytes(data[at:at + 4], "big"), data[at + 4:at + 8], at + 8
            if size == 1:
                size, body = int.from_bytes(data[at + 8:at + 16], "big"), at + 16
            elif size == 0:
                size = end - at
            if size < body - at:
                return
            stop = min(at + size, end)
            yield kind, body, stop
            if kind not in _MP4_LEAVES:  # (a leaf's body that is no run of boxes stops at an impossible size)
                yield from boxes(body + (4 if kind == b"meta" else 0), stop, depth + 1)
            at += size

    most = 0
    for kind, body, end in boxes(0, len(data), 0):
        if kind == b"cmov":
            raise DecodeError("its movie header is compressed (cmov): not read")
        if kind in (b"stsz", b"stz2"):  # version/flags, sample size (or field size), sample count
            most = max(most, int.from_bytes(data[body + 8:body + 12], "big"))
        elif kind == b"stts":  # version/flags, entries, then (sample count, delta) runs
            runs = range(body + 8, min(end, body + 8 + 8 * int.from_bytes(data[body + 4:body + 8], "big")) - 7, 8)
            most = max(most, sum(int.from_bytes(data[at:at + 4], "big") for at in runs))
        elif kind == b"trun":  # version/flags, sample count
            most = max(most, int.from_bytes(data[body + 4:body + 8], "big"))
    return most


def _check_size(width: int, height: int, max_pixels: Optional[int], pix_fmt: Optional[str] = None,
                max_bytes: Optional[int] = None) -> None:
    """A frame's pixels against decode.max_image_pixels, and the bytes FFmpeg's decoder holds for
    it in its pixel format (16-bit RGBA: 8 a pixel; 4:2:0: 1.5) against decode.max_decode_bytes."""
    if max_pixels is not None and width * height > max_pixels:
        raise DecodeError(f"frames are {width}x{height} = {width * height:,} pixels, over "
                          f"the limit of {max_pixels:,} (decode.max_image_pixels)")
    if max_bytes is not None and pix_fmt and width > 0 and height > 0:
        import av

        planes = av.VideoFormat(pix_fmt, width, height).components
        need = sum(c.width * c.height * ((c.bits + 7) // 8) for c in planes)
        check_budget(width, height, need / (width * height), max_bytes, "frame")


def sample(data: bytes, fps: Optional[float] = None, keyframes: bool = False,
           max_frames: Optional[int] = None, short_side: Optional[int] = None,
           max_pixels: Optional[int] = None, max_held: Optional[int] = None,
           max_bytes: Optional[int] = None, max_seconds: Optional[float] = None) -> list[VideoFrame]:
    """The frames of the first video stream of ``data`` chosen by ``fps`` / ``keyframes``, at most
    ``max_frames``. Each is converted to RGB by FFmpeg's scaler, which also brings the shorter side
    down to ``short_side`` (area averaging) so that a long clip never holds full-size frames. A
    frame over ``max_pixels`` is refused by FFmpeg before it allocates one; one whose pixel format
    needs more than ``max_bytes`` (decode.max_decode_bytes) is refused from the stream's header
    and checked again as each frame comes out. The frames kept weigh at most ``max_held`` bytes
    (decode.max_container_bytes): past it, one error frame says so and the rest of the video is not read (a 36 KB file of 2,000 frames of 16384x64,
    whose shorter side needs no scaling, held 2.8 GB). Past ``max_seconds`` of this thread's CPU
    (decode.max_seconds), likewise: every packet is decoded, kept or not (3,000 frames of 8192x8192
    in 249 KB within one second of video: 88 s at fps 1).

    ``index`` is the frame's identity in the stream, whatever the sampling: the rank of its
    presentation timestamp among those of every packet of the stream (read by a first demux pass
    that decodes nothing), so fps, keyframes and max_frames give the same frame the same number,
    with B-frames and variable frame rates alike. Raises DecodeError when the file is not a readable
    video.
    """
    import bisect

    from imgclf_ray.extras import require

    av = require("video", error=DecodeError)

    # FFmpeg's own check on a frame's size, before it allocates one: opening a file decodes its
    # first frames (a 4 MB file whose PNG frame is 16000x16000 at 16-bit RGBA held 2 GB there).
    limit = {"max_pixels": str(max_pixels)} if max_pixels is not None else {}
    # Container formats only: FFmpeg's probe would also take a 36-byte text file for a concat list
    # (and read the files it names), an SDP description (and open network sockets), a playlist...
    # and no file is opened from inside one (no protocol is allowed: the bytes come from here).
    opened = {"format_whitelist": ",".join(DEMUXERS), "protocol_whitelist": "none"}
    declared = _mp4_samples(data)
    if declared > len(data):  # (each sample is at least a byte of the file)
        raise DecodeError(f"its MP4 sample table declares {declared:,} samples in a file of {len(data):,} bytes")
    try:
        with av.open(io.BytesIO(data), mode="r", options={**limit, **opened}) as probe:
            if not probe.streams.video:
                raise DecodeError("no video stream in this file")
            timeline = sorted(p.pts for p in probe.demux(probe.streams.video[0]) if p.pts is not None)
        container = av.open(io.BytesIO(data), mode="r", options={**limit, **opened})
    except DecodeError:
        raise
    except (av.FFmpegError, ValueError, OSError) as exc:
        raise DecodeError(f"not a video PyAV can open as {CONTAINERS} ({describe(exc)})") from None
    with container:
        stream = container.streams.video[0]
        if stream.codec_context is None:  # a codec id FFmpeg here has no decoder for (or a damaged header)
            raise DecodeError("its video stream's codec is not one this FFmpeg decodes")
        stream.codec_context.thread_count = 1  # a decode task holds one CPU
        stream.codec_context.options = {**stream.codec_context.options, **limit}
        codec = stream.codec_context  # (the header's size and format; 0 or None: unknown)
        _check_size(codec.width, codec.height, max_pixels, codec.pix_fmt, max_bytes)
        if keyframes:
            stream.codec_context.skip_frame = "NONKEY"
        base = stream.time_base
        start = float(stream.start_time * base) if stream.start_time is not None and base else 0.0
        frames: list[VideoFrame] = []
        next_t, last_index, held = -math.inf, -1, 0

        def index_of(pts: Optional[int]) -> int:
            nonlocal last_index
            if pts is not None and timeline:
                last_index = bisect.bisect_left(timeline, pts)
            else:  # no timestamp: the next number after the last frame seen
                last_index += 1
            return last_index

        bad: Optional[VideoFrame] = None  # the error row of the packets refused since the last frame kept
        more = 0  # (and how many came after its own: a run of them is one row, not a row a packet)

        def done() -> list[VideoFrame]:
            nonlocal bad, more
            if bad is not None and more:
                bad.error += f"; {more:,} more after it before the next frame kept"
            bad, more = None, 0
            return frames

        jpeg_frames = codec.name in ("mjpeg", "mjpegb", "smvjpeg", "ljpeg", "jpegls")  # (each packet a JPEG)
        started = time.thread_time()
        for packet in container.demux(stream):
            if max_seconds is not None and time.thread_time() - started > max_seconds:
                done()
                frames.append(VideoFrame(index_of(packet.pts), math.nan,
                                         error=f"decoding took more than decode.max_seconds ({max_seconds:g} s of "
                                               "CPU): the rest of the video was not read"))
                return frames
            try:
                if jpeg_frames and jpeg_scans(bytes(packet)) > MAX_JPEG_SCANS:  # (one packet: minutes of CPU)
                    raise DecodeError(f"a motion-JPEG frame of more than {MAX_JPEG_SCANS} scans: not decoded")
                decoded = packet.decode()
            except (av.FFmpegError, ValueError) as exc:
                index = index_of(packet.pts)
                if bad is not None:
                    more += 1
                    continue
                t = float(packet.pts * base) if packet.pts is not None and base else math.nan
                over = (", or a frame over decode.max_image_pixels (FFmpeg refuses both alike)"
                        if limit and getattr(exc, "errno", None) == errno.EINVAL else "")
                why = str(exc) if isinstance(exc, DecodeError) else f"corrupt video packet{over} ({describe(exc)})"
                bad = VideoFrame(index, t, error=why)
                frames.append(bad)
                continue
            for frame in decoded:
                t = float(frame.time) if frame.time is not None else math.nan
                keep = fps is None or math.isnan(t) or t >= next_t - 1e-6
                index = index_of(frame.pts)
                if not keep:
                    continue
                done()
                if fps is not None and not math.isnan(t):
                    next_t = start + (math.floor((t - start) * fps + 1e-6) + 1) / fps
                width, height = frame.width, frame.height
                _check_size(width, height, max_pixels, frame.format.name, max_bytes)
                w, h = _scaled(width, height, short_side)
                held += w * h * 4  # (Pillow holds RGB in 4 bytes a pixel)
                if max_held is not None and held > max_held:
                    frames.append(VideoFrame(index, t, error=f"the frames kept so far fill decode.max_container_bytes "
                                                             f"({max_held / 2**20:,.0f} MiB): the rest of the video was "
                                                             "not read (lower source.video.fps or set max_frames)"))
                    return frames
                image = frame.to_image(width=w, height=h, interpolation="AREA")
                frames.append(VideoFrame(index, t, image, (width, height)))
                if max_frames is not None and len(frames) >= max_frames:
                    return frames
        return done()
