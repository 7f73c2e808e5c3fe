"""Video files written by PyAV: frames at a rate, keyframes only, every frame; bad files and
packets are error rows."""

from __future__ import annotations

import io
import math
from pathlib import Path

import av
import numpy as np
import pytest

from imgclf_ray.imaging.decode import DecodeError
from imgclf_ray.imaging.video import sample
from imgclf_ray.io.listing import list_archive
from imgclf_ray.runner.job import execute
from imgclf_ray.spec import parse_spec
from tests.support.jobs import read_run

FPS, FRAMES, GOP = 25, 50, 10


def _write_video(frames: int = FRAMES, fps: int = FPS, gop: int = GOP, size=(160, 120), fmt: str = "mp4") -> bytes:
    """An H.264 MP4 of a real photograph panning right, with frame i's number written into its
    top-left block as grey level 4 * i (so a decoded frame says which one it is)."""
    from sklearn.datasets import load_sample_images

    photo = load_sample_images().images[0]
    w, h = size
    buf = io.BytesIO()
    with av.open(buf, mode="w", format=fmt) as out:
        stream = out.add_stream("libx264", rate=fps, options={"g": str(gop), "keyint_min": str(gop),
                                                               "sc_threshold": "0", "crf": "10"})
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        for i in range(frames):
            img = np.ascontiguousarray(photo[100:100 + h, 100 + 2 * i:100 + 2 * i + w])
            img[:32, :32] = 4 * i
            for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return buf.getvalue()


def _number(frame) -> int:
    return int(round(np.asarray(frame.image)[4:12, 4:12].mean() / 4))


@pytest.fixture(scope="module")
def clip() -> bytes:
    return _write_video()


def test_every_frame_in_order_with_its_timestamp(clip):
    frames = sample(clip)
    assert [f.index for f in frames] == list(range(FRAMES))
    assert [_number(f) for f in frames] == list(range(FRAMES))
    np.testing.assert_allclose([f.timestamp for f in frames], np.arange(FRAMES) / FPS, atol=1e-6)
    assert all(f.size == (160, 120) and f.image.size == (160, 120) and f.error is None for f in frames)


def test_frames_at_a_rate(clip):
    frames = sample(clip, fps=5)
    assert [f.index for f in frames] == list(range(0, FRAMES, 5))
    assert [_number(f) for f in frames] == list(range(0, FRAMES, 5))
    np.testing.assert_allclose([f.timestamp for f in frames], np.arange(0, 2, 0.2), atol=1e-6)
    # 3 per second of a 25 fps clip: the first frame at or after each third of a second
    assert [f.index for f in sample(clip, fps=3)] == [0, 9, 17, 25, 34, 42]


def test_keyframes_only_are_decoded(clip):
    frames = sample(clip, keyframes=True)
    assert [f.index for f in frames] == list(range(0, FRAMES, GOP))
    assert [_number(f) for f in frames] == list(range(0, FRAMES, GOP))
    # with a rate: the first keyframe at or after each half second
    assert [f.index for f in sample(clip, keyframes=True, fps=2)] == [0, 20, 30, 40]
    assert [f.index for f in sample(clip, keyframes=True, max_frames=2)] == [0, 10]


def test_frames_are_scaled_down_to_the_model_side_only(clip):
    frames = sample(clip, fps=25, max_frames=3, short_side=60)
    assert len(frames) == 3 and frames[0].image.size == (80, 60) and frames[0].size == (160, 120)
    assert sample(clip, max_frames=1, short_side=500)[0].image.size == (160, 120)  # never enlarged


def test_bad_files_are_refused_with_a_reason(clip):
    with pytest.raises(DecodeError, match="not a video PyAV can open"):
        sample(b"\x00\x00\x00\x18ftypmp42 but then nothing useful")
    with pytest.raises(DecodeError, match="not a video PyAV can open"):
        sample(b"<html>this is an error page</html>")
    wav = io.BytesIO()
    with av.open(wav, mode="w", format="wav") as out:
        stream = out.add_stream("pcm_s16le", rate=8000)
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 800), np.int16), format="s16", layout="mono")
        frame.sample_rate = 8000
        for packet in stream.encode(frame):
            out.mux(packet)
    with pytest.raises(DecodeError, match="not a video PyAV can open as MP4/MOV, Matroska/WebM, AVI"):
        sample(wav.getvalue())  # (audio: its demuxer is not among those a video archive is read with)
    with pytest.raises(DecodeError, match="decode.max_image_pixels"):
        sample(clip, max_pixels=100 * 100)
    with pytest.raises(DecodeError, match="^its video stream's codec is not one this FFmpeg decodes$"):
        sample(clip.replace(b"avc1", b"zzzz"))  # a codec FFmpeg has no decoder for (it was AttributeError)


def test_a_frame_over_the_pixel_limit_is_refused_before_ffmpeg_allocates_it(tmp_path):
    """An AVI whose one PNG frame is 8000x8000 at 16-bit RGBA (512 MB decoded) in 1 MB, over a
    limit of 10 million pixels: opening
    the file decodes its first frame, and the frame was then checked after FFmpeg had decoded it
    (a 16000x16000 one: 2 GB). FFmpeg's own max_pixels refuses it first; the process's peak,
    measured in a process of its own, stays far below the frame."""
    import fractions
    import json
    import struct
    import subprocess
    import sys
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    side, deflate = 8000, zlib.compressobj(9)
    idat = b"".join(deflate.compress(bytes(1 + side * 8)) for _ in range(side)) + deflate.flush()
    png = (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 16, 6, 0, 0, 0))
           + chunk(b"IDAT", idat) + chunk(b"IEND", b""))
    with av.open(str(tmp_path / "v.avi"), "w", format="avi") as out:
        stream = out.add_stream("png", rate=1)
        stream.width, stream.height, stream.pix_fmt = side, side, "rgba64be"
        packet = av.Packet(png)
        packet.stream, packet.pts, packet.dts, packet.time_base = stream, 0, 0, fractions.Fraction(1, 1)
        out.mux(packet)
    assert (tmp_path / "v.avi").stat().st_size < 2 << 20
    code = ("import json, re, sys; from imgclf_ray.imaging.video import sample\n"
            "frames = sample(open(sys.argv[1], 'rb').read(), max_pixels=10_000_000)\n"
            "peak = int(re.search(r'VmHWM:\\s+(\\d+) kB', open('/proc/self/status').read()).group(1))\n"
            "print(json.dumps([[f.error for f in frames], peak]))")  # (this process's own peak: ru_maxrss keeps the fork's)
    done = subprocess.run([sys.executable, "-c", code, str(tmp_path / "v.avi")], capture_output=True, text=True,
                          timeout=120, cwd=Path(__file__).parents[2])
    assert done.returncode == 0, done.stderr[-2000:]
    errors, peak_kib = json.loads(done.stdout)
    assert errors == ["corrupt video packet, or a frame over decode.max_image_pixels (FFmpeg refuses both alike) "
                      "(ArgumentError: Invalid argument: <value> returned 22)"], errors
    assert peak_kib < 300 << 10, peak_kib  # (the frame is 512 MB)


def test_a_frame_is_held_to_the_decode_byte_budget_in_its_own_pixel_format(clip):
    """decode.max_decode_bytes applies to a video frame as to a still image: the bytes FFmpeg's
    decoder holds for one frame in the stream's pixel format (16-bit RGBA: 8 a pixel; 4:2:0: 1.5),
    from the stream's header before a frame is decoded. It was not applied to video at all."""
    from imgclf_ray.containers.video import split
    from imgclf_ray.spec import DecodeSpec, SourceSpec

    buf = io.BytesIO()  # two 300x200 PNG frames of 16-bit RGBA: 480,000 bytes each decoded
    with av.open(buf, mode="w", format="avi") as out:
        stream = out.add_stream("png", rate=1)
        stream.width, stream.height, stream.pix_fmt = 300, 200, "rgba64be"
        for i in range(2):
            pixels = np.full((200, 300, 4), 1000 * i, dtype=np.uint16)
            for packet in stream.encode(av.VideoFrame.from_ndarray(pixels, format="rgba64le")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    deep = buf.getvalue()
    with pytest.raises(DecodeError, match=r"^frame of 300x200 needs 480,000 bytes to decode, over decode.max_decode_bytes \(479,999 bytes\)$"):
        sample(deep, max_bytes=479_999)
    assert len(sample(deep, max_bytes=480_000)) == 2
    assert len(sample(clip, max_bytes=160 * 120 * 3 // 2)) == FRAMES  # (4:2:0: 1.5 bytes a pixel)
    with pytest.raises(DecodeError, match="over decode.max_decode_bytes"):
        sample(clip, max_bytes=160 * 120 * 3 // 2 - 1)
    source = SourceSpec(uri="/videos", video={"fps": None})  # (and a job's decode section reaches it)
    with pytest.raises(DecodeError, match="over decode.max_decode_bytes"):
        split(deep, source, DecodeSpec(max_decode_bytes=400_000), None)
    assert len(split(deep, source, DecodeSpec(), None)) == 2


def test_text_that_ffmpeg_would_take_for_a_playlist_or_a_stream_is_not_a_video(clip, tmp_path, monkeypatch):
    """FFmpeg's probe takes a 36-byte text file for a concat list (and reads the files it names,
    relative to the worker's folder: their frames were committed as the archive file's rows), an
    SDP description (and binds UDP sockets, joins multicast groups, waits 20 s), an HLS playlist.
    Only container demuxers are allowed, and no protocol: each is refused, and the clip beside it,
    which the list names, is never read."""
    (tmp_path / "secret.mp4").write_bytes(clip)
    monkeypatch.chdir(tmp_path)
    for text in (b"ffconcat version 1.0\nfile secret.mp4\n",
                 b"v=0\no=- 0 0 IN IP4 127.0.0.1\ns=x\nc=IN IP4 127.0.0.1\nt=0 0\nm=video 18790 RTP/AVP 96\n"
                 b"a=rtpmap:96 H264/90000\n",
                 b"#EXTM3U\n#EXT-X-TARGETDURATION:10\n#EXTINF:10,\nsecret.mp4\n#EXT-X-ENDLIST\n"):
        with pytest.raises(DecodeError, match="^not a video PyAV can open as MP4/MOV"):
            sample(text)
    assert len(sample(clip, fps=None)) == FRAMES  # (a container: read as before)


def test_the_frames_kept_of_one_video_are_bounded_by_the_container_budget(clip):
    """Every sampled frame of a file is held until the file's rows are made: a 36 KB video of 2,000
    frames of 16384x64 (a shorter side that needs no scaling) held 2.8 GB. Past
    decode.max_container_bytes, one error frame says so and the rest is not read."""
    frames = sample(clip, fps=None, max_held=5 * 160 * 120 * 4)
    assert [f.index for f in frames] == list(range(6)) and all(f.image is not None for f in frames[:5])
    assert frames[5].image is None and frames[5].error.startswith("the frames kept so far fill "
                                                                  "decode.max_container_bytes (0 MiB)")
    assert len(sample(clip, fps=None, max_held=50 * 160 * 120 * 4)) == FRAMES


def test_an_mp4_index_declaring_more_samples_than_bytes_is_refused_before_ffmpeg_builds_it(clip):
    """FFmpeg's mov demuxer makes an index entry for every sample a sample table declares while the
    file opens: a 656-byte MP4 declaring 85 million samples of one size held 3 GB. A sample is at
    least one byte of the file: more samples than bytes is refused before FFmpeg reads it."""
    from imgclf_ray.imaging.video import _mp4_samples

    assert _mp4_samples(clip) == FRAMES  # (the clip's own table: as many as its frames)
    at = clip.index(b"stsz") + 4  # version/flags, sample size, sample count
    forged = clip[:at + 4] + (1).to_bytes(4, "big") + (85_000_000).to_bytes(4, "big") + clip[at + 12:]
    with pytest.raises(DecodeError, match=f"^its MP4 sample table declares 85,000,000 samples in a file of "
                                          f"{len(forged):,} bytes$"):
        sample(forged)
    # Where FFmpeg still finds the table: after an unknown first box, inside a udta box (it reads
    # a table in any box); a compressed movie header (cmov) would hide it: refused as such.
    junk = (16).to_bytes(4, "big") + b"junk" + bytes(8) + forged
    start = forged.index(b"stsz") - 4
    size = int.from_bytes(forged[start:start + 4], "big")
    in_udta = forged[:start] + (size + 8).to_bytes(4, "big") + b"udta" + forged[start:]
    for variant in (junk, in_udta):
        with pytest.raises(DecodeError, match="^its MP4 sample table declares 85,000,000 samples"):
            sample(variant)
    moov = clip.index(b"moov") - 4
    cmov = clip[:moov + 4] + b"cmov" + clip[moov + 8:]
    with pytest.raises(DecodeError, match=r"^its movie header is compressed \(cmov\): not read$"):
        sample(cmov)


def test_a_cut_or_damaged_file_gives_what_it_holds(clip):
    """A log cut short (upload interrupted) or with damaged bytes in the middle: the readable frames
    come out, damaged packets become error frames, nothing raises."""
    ts = _write_video(frames=30, gop=5, fmt="mpegts")  # a streamable container, as cameras record
    frames = sample(ts[: len(ts) * 2 // 3])
    assert 5 <= len(frames) < 30 and [f.index for f in frames] == list(range(len(frames)))
    assert [_number(f) for f in frames if f.error is None][:5] == [0, 1, 2, 3, 4]
    mp4 = _write_video(frames=30, gop=5)  # MP4 keeps its index at the end: cut, it cannot be opened
    with pytest.raises(DecodeError, match="not a video PyAV can open"):
        sample(mp4[: len(mp4) * 2 // 3])
    buf = io.BytesIO()  # MPEG-4 part 2 in AVI, 20 frames of noise, bytes overwritten mid-file
    with av.open(buf, mode="w", format="avi") as out:
        stream = out.add_stream("mpeg4", rate=25)
        stream.width, stream.height = 64, 48
        for i in range(20):
            noise = np.random.default_rng(i).integers(0, 255, (48, 64, 3), dtype=np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(noise, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    avi = bytearray(buf.getvalue())
    middle = len(avi) // 2
    avi[middle:middle + 3000] = np.random.default_rng(0).integers(0, 256, 3000, dtype=np.uint8).tobytes()
    frames = sample(bytes(avi))
    errors = [f for f in frames if f.error]
    assert errors and all(f.error.startswith("corrupt video packet") and f.image is None for f in errors)
    assert len(frames) - len(errors) >= 10 and len({f.index for f in frames}) == len(frames)


def test_a_video_is_decoded_for_at_most_decode_max_seconds_of_cpu(clip, monkeypatch):
    """Every packet is decoded, kept or not: 3,000 frames of 8192x8192 (13 bytes each, all within
    one second) took 88 s at fps 1 from 249 KB. Past decode.max_seconds of CPU the rest is not read:
    the frames before it and one error row after them. (The CPU clock is this thread's, made here to
    tick a second a reading: the cut falls after the same packet on any machine.)"""
    import itertools

    from imgclf_ray.imaging import video

    assert len(sample(clip, max_seconds=3600)) == FRAMES
    ticks = itertools.count()
    monkeypatch.setattr(video.time, "thread_time", lambda: float(next(ticks)))
    frames = sample(clip, max_seconds=10.5)  # (read once at the start, then before each packet: 10 decoded)
    kept = [f.index for f in frames[:-1]]
    assert 5 <= len(kept) <= 10 and kept == list(range(len(kept))) and all(f.error is None for f in frames[:-1])
    assert frames[-1].index == 10  # (the first packet not decoded: its frame's number)
    assert frames[-1].image is None and frames[-1].error == (
        "decoding took more than decode.max_seconds (10.5 s of CPU): the rest of the video was not read")


def test_a_motion_jpeg_frame_of_too_many_scans_is_not_decoded():
    """One motion-JPEG packet is one JPEG: 20,000 refinement scans over 9000x9000 in 2.4 MB took
    80 s of CPU in one packet (decode.max_seconds is checked between packets). Past 256 scans, as
    for a still JPEG, the packet is an error row; the frames around it decode."""
    from tests.corpus import eob_scans_jpeg

    buf = io.BytesIO()
    with av.open(buf, mode="w", format="avi") as out:
        stream = out.add_stream("mjpeg", rate=25)
        stream.width, stream.height, stream.pix_fmt = 64, 64, "yuvj420p"
        packets = []
        for i in range(6):
            packets += stream.encode(av.VideoFrame.from_ndarray(np.full((64, 64, 3), 40 * i, np.uint8), format="rgb24"))
        packets += stream.encode()
        for n, packet in enumerate(packets):
            if n == 3:
                scans = av.Packet(eob_scans_jpeg(64, 257))
                scans.stream, scans.pts, scans.dts, scans.time_base = stream, packet.pts, packet.dts, packet.time_base
                packet = scans
            out.mux(packet)
    frames = sample(buf.getvalue())
    assert [f.index for f in frames] == list(range(6))
    assert [f.error for f in frames] == [None] * 3 + ["a motion-JPEG frame of more than 256 scans: not decoded"] + [None] * 2


def test_a_run_of_undecodable_packets_is_one_error_row():
    """Twenty packets in a row replaced by noise: one error row for the run, at the first one's
    frame number, saying how many followed (it was a row a packet: a small file of many tiny bad
    packets made as many rows); the forty good frames around it still come out."""
    buf = io.BytesIO()
    with av.open(buf, mode="w", format="avi") as out:
        stream = out.add_stream("mpeg4", rate=25, options={"g": "10"})
        stream.width, stream.height = 64, 48
        packets = []
        for i in range(60):
            noise = np.random.default_rng(i).integers(0, 255, (48, 64, 3), dtype=np.uint8)
            packets += stream.encode(av.VideoFrame.from_ndarray(noise, format="rgb24"))
        packets += stream.encode()
        rng = np.random.default_rng(0)
        for n, packet in enumerate(packets):
            if 20 <= n < 40:
                noise = av.Packet(rng.integers(0, 256, packet.size, dtype=np.uint8).tobytes())
                noise.stream, noise.pts, noise.dts, noise.time_base = stream, packet.pts, packet.dts, packet.time_base
                packet = noise
            out.mux(packet)
    frames = sample(buf.getvalue())
    errors = [f for f in frames if f.error]
    assert len(frames) == 41 and [f.index for f in errors] == [20], [(f.index, f.error) for f in errors]
    assert errors[0].error.startswith("corrupt video packet (") and errors[0].error.endswith(
        "; 19 more after it before the next frame kept")
    assert [f.index for f in frames if f.error is None] == list(range(20)) + list(range(40, 60))


@pytest.mark.ray
def test_video_archive_one_row_per_sampled_frame(ray_session, tiny_model, tmp_path, clip):
    root = tmp_path / "logs"
    (root / "day1").mkdir(parents=True)
    (root / "day1" / "cam-front.mp4").write_bytes(clip)
    (root / "day1" / "cam-rear.mp4").write_bytes(_write_video(frames=25))
    (root / "day1" / "broken.mp4").write_bytes(b"not a video at all")
    (root / "day1" / "notes.txt").write_text("not listed")
    spec = parse_spec({"name": "video", "source": {"uri": str(root), "video": {"fps": 5}},
                       "model": {"uri": tiny_model}, "sink": {"uri": str(tmp_path / "out")}}, "<test>")
    manifest = list_archive(spec.source)
    assert manifest.num_rows == 3
    result = execute(spec, manifest, "v1")
    assert result.rows == 10 + 5 + 1 and result.by_status == {"ok": 15, "error": 1}
    assert result.files == 3 and result.summary()["listing"] == {"files": 3, "skipped": {}}
    from imgclf_ray.report.summary import format_summary

    assert format_summary(result).startswith("run v1: 16 images from 3 files")
    rows = read_run(str(tmp_path / "out"), "v1")
    by_file: dict[str, list] = {}
    for r in rows:
        by_file.setdefault(Path(r["uri"]).name, []).append(r)
    front = sorted(by_file["cam-front.mp4"], key=lambda r: r["frame"])
    assert [r["frame"] for r in front] == list(range(0, FRAMES, 5))
    assert [round(r["timestamp"], 6) for r in front] == [round(t, 6) for t in np.arange(0, 2, 0.2)]
    assert all(r["label"] is not None and (r["width"], r["height"]) == (160, 120) for r in front)
    assert len({r["image_id"] for r in rows}) == 16
    (broken,) = by_file["broken.mp4"]
    assert broken["status"] == "error" and broken["error"].startswith("decode: not a video PyAV can open")
    assert broken["timestamp"] is None or math.isnan(broken["timestamp"])


def _write_vfr(frames: int = 40, size=(96, 64)) -> bytes:
    """An H.264 MP4 with B-frames and a variable frame rate (steps of 20, 60 and 33 ms), frame i's
    number painted in as in _write_video."""
    from fractions import Fraction

    buf = io.BytesIO()
    with av.open(buf, mode="w", format="mp4") as out:
        stream = out.add_stream("libx264", rate=30, options={"g": "8", "bf": "3", "crf": "10"})
        stream.width, stream.height, stream.pix_fmt = *size, "yuv420p"
        stream.codec_context.time_base = Fraction(1, 1000)
        t = 0
        for i in range(frames):
            img = np.full((size[1], size[0], 3), 128, dtype=np.uint8)
            img[:32, :32] = 4 * i
            frame = av.VideoFrame.from_ndarray(img, format="rgb24")
            frame.pts, frame.time_base = t, Fraction(1, 1000)
            t += (20, 60, 33)[i % 3]
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return buf.getvalue()


@pytest.mark.parametrize("kind", ["constant rate", "variable rate with B-frames"])
def test_a_frame_keeps_its_number_whatever_the_sampling(kind, clip):
    """frame = the rank of the frame's presentation time in the stream: the same picture has the
    same number (so the same image_id) at any fps, keyframes only or not, with any max_frames."""
    data = clip if kind == "constant rate" else _write_vfr()
    every = sample(data)
    assert [f.index for f in every] == list(range(len(every)))
    assert [_number(f) for f in every] == list(range(len(every)))
    number_at = {round(f.timestamp, 6): f.index for f in every}
    for mode in ({"fps": 3}, {"fps": 7}, {"keyframes": True}, {"keyframes": True, "fps": 2},
                 {"fps": 5, "max_frames": 3}):
        chosen = sample(data, **mode)
        assert chosen, mode
        for f in chosen:
            assert f.index == number_at[round(f.timestamp, 6)] == _number(f), (mode, f.timestamp)
        assert max(f.index for f in chosen) < len(every)
