"""`vitres run --source` reads streams and devices through PyAV, not only files: a video
served over HTTP on loopback gives the file's frames; ``file://`` URLs work; a stream
that does not answer and a device that is not there are clear errors."""

import functools
import http.server
import threading

import pytest
import torch
from test_runtime_cli import decoded_frames, encode_video

from vitres.data import load_fashion_mnist
from vitres.runtime.sources import VideoSource, open_source, stream_target


@pytest.fixture(scope="module")
def video(tmp_path_factory):
    folder = tmp_path_factory.mktemp("video")
    path = folder / "clip.mp4"
    encode_video(path, load_fashion_mnist("test").images[:12])
    return path


def test_stream_targets():
    assert stream_target("rtsp://cam.local:554/live") == ("rtsp://cam.local:554/live", None)
    assert stream_target("file:///data/clip.mp4") == ("/data/clip.mp4", None)
    assert stream_target("v4l2:/dev/video0") == ("/dev/video0", "v4l2")
    assert stream_target("/no/such/file.mp4") is None
    assert stream_target("fashion-mnist") is None


def test_a_video_over_http_gives_the_files_frames(video):
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(video.parent))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/{video.name}"
        source = open_source(url, in_chans=1)
        assert isinstance(source, VideoSource)
        frames = [f.image for f in source]
    finally:
        server.shutdown()
    expected = decoded_frames(video)
    assert len(frames) == len(expected) == 12
    assert all(torch.equal(a, b) for a, b in zip(frames, expected, strict=True))
    local = [f.image for f in open_source(f"file://{video}", in_chans=1)]
    assert all(torch.equal(a, b) for a, b in zip(local, expected, strict=True))


def test_streams_and_devices_that_are_not_there_are_clear_errors():
    with pytest.raises(ValueError, match="stream or device that answers"):
        open_source("http://127.0.0.1:9/nothing.mp4", in_chans=1)  # port 9: refused
    with pytest.raises(ValueError, match="stream or device that answers"):
        open_source("v4l2:/dev/video99", in_chans=1)
    with pytest.raises(FileNotFoundError, match="stream URL"):
        open_source("/no/such/clip.mp4", in_chans=1)
