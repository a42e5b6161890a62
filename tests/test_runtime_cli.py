"""`vitres run` end to end on a video encoded here with PyAV, an image folder and the
dataset (real Fashion-MNIST frames); every trace line is checked against a direct model
call at the resolution the line reports, and against the true labels."""

from __future__ import annotations

import json

import av
import numpy as np
import pytest
import torch
from PIL import Image
from runtime_fixtures import record

import vitres
from vitres.cli import main
from vitres.data import load_fashion_mnist, prepare_batch
from vitres.runtime.sources import DatasetSource, FolderSource, VideoSource, open_source
from vitres.tune.records import append_result

MODEL = "fmnist-vit-multires"
N = 12


@pytest.fixture(scope="module")
def model():
    torch.set_num_threads(1)
    return vitres.load_model(MODEL)


@pytest.fixture(scope="module")
def data():
    test = load_fashion_mnist("test")
    return test.images[:N], test.labels[:N]


@pytest.fixture()
def records(tmp_path):
    """Records of the bundled model at 16/20/24/28 px (the ladder), median 0.5 ms."""
    path = tmp_path / "results.jsonl"
    for side in (16, 20, 24, 28):
        m = record(side, 0.5, accuracy=0.8 + side / 1000)
        m.config = type(m.config)(MODEL, (side, side))
        append_result(path, m)
    return path


def predict(model, image, side):
    x = prepare_batch(image[None], side, mean=model.config.mean, std=model.config.std, in_chans=1)
    with torch.inference_mode():
        return int(model(x).argmax())


def encode_video(path, images, codec="libx264"):
    with av.open(str(path), "w") as container:
        # lossless x264 (4:4:4); FFV1 with every frame a key frame (intra-only)
        options = {"qp": "0", "preset": "ultrafast"} if codec == "libx264" else {"g": "1"}
        stream = container.add_stream(codec, rate=30, options=options)
        stream.width, stream.height = 28, 28
        stream.pix_fmt = "yuv444p" if codec == "libx264" else "gray"
        for image in images:
            frame = av.VideoFrame.from_ndarray(image[0].numpy(), format="gray")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def decoded_frames(path):
    with av.open(str(path)) as container:
        return [
            torch.from_numpy(f.to_ndarray(format="gray"))[None] for f in container.decode(video=0)
        ]


def read_trace(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def check_trace(trace, model, images, labels=None):
    assert [t["frame"] for t in trace] == list(range(len(trace)))
    for t, image in zip(trace, images):
        assert t["pred"] == predict(model, image, t["resolution"])
        assert t["met"] == (t["latency_ms"] <= t["deadline_ms"])
        assert set(t) >= {"frame", "t_s", "resolution", "latency_ms", "deadline_ms", "met", "pred"}
    if labels is not None:
        assert [t["label"] for t in trace] == [int(v) for v in labels]
    else:
        assert all("label" not in t for t in trace)


def test_run_on_a_video(tmp_path, model, data, records, capsys):
    images, labels = data
    video = tmp_path / "stream.mp4"
    encode_video(video, images)
    labels_file = tmp_path / "labels.txt"
    labels_file.write_text("\n".join(str(int(v)) for v in labels) + "\n")
    trace_path = tmp_path / "trace.jsonl"
    code = main(
        ["run", "--model", MODEL, "--source", str(video), "--target-fps", "30",
         "--controller", "predictive", "--records", str(records), "--labels", str(labels_file),
         "--trace", str(trace_path), "--no-progress", "--threads", "1"]
    )  # fmt: skip
    assert code == 0
    trace = read_trace(trace_path)
    assert len(trace) == N
    frames = decoded_frames(video)
    # near-lossless: the decoded frames differ from the images by at most 1 grey level
    assert max(int((f.int() - i.int()).abs().max()) for f, i in zip(frames, images)) <= 1
    check_trace(trace, model, frames, labels)
    assert all(t["deadline_ms"] == pytest.approx(1000 / 30) for t in trace)
    out = capsys.readouterr().out
    assert f"{N} frames from {video}" in out and "deadline hits" in out


def test_run_on_a_folder_skips_a_corrupt_file(tmp_path, model, data, records, capsys):
    images, labels = data
    root = tmp_path / "folder"
    for i, (image, label) in enumerate(zip(images, labels)):
        (root / f"class{int(label)}").mkdir(parents=True, exist_ok=True)
        Image.fromarray(image[0].numpy()).save(root / f"class{int(label)}" / f"{i:03d}.png")
    (root / f"class{int(labels[0])}" / "broken.png").write_bytes(b"\x89PNG not really")
    source = FolderSource(root, in_chans=1)
    frames = list(source)
    assert source.skipped.count == 1 and "broken.png" in source.skipped.reasons[0]
    trace_path = tmp_path / "trace.jsonl"
    code = main(
        ["run", "--model", MODEL, "--source", str(root), "--max-latency-ms", "50",
         "--controller", "fixed:20", "--records", str(records), "--trace", str(trace_path),
         "--no-progress"]
    )  # fmt: skip
    assert code == 0
    trace = read_trace(trace_path)
    assert len(trace) == N and all(t["resolution"] == 20 for t in trace)
    # folder order is class then file; class folders are named by label, so labels are
    # indices into the sorted class names
    classes = sorted({f"class{int(v)}" for v in labels})
    true = [int(labels[int(f.name[-7:-4])]) for f in frames]  # from the file names
    check_trace(trace, model, [f.image for f in frames], [classes.index(f"class{v}") for v in true])
    assert "skipped 1 undecodable frame" in capsys.readouterr().out


def test_run_on_the_dataset(tmp_path, model, data, records):
    images, labels = data
    trace_path = tmp_path / "trace.jsonl"
    code = main(
        ["run", "--model", MODEL, "--source", "fashion-mnist", "--max-latency-ms", "5",
         "--controller", "step", "--records", str(records), "--frames", str(N),
         "--trace", str(trace_path), "--no-progress"]
    )  # fmt: skip
    assert code == 0
    trace = read_trace(trace_path)
    assert len(trace) == N
    check_trace(trace, model, images, labels)


def test_run_without_records_calibrates_first(tmp_path, model, data, capsys):
    trace_path = tmp_path / "trace.jsonl"
    code = main(
        ["run", "--model", MODEL, "--source", "fashion-mnist", "--max-latency-ms", "1000",
         "--ladder", "12,16", "--frames", "5", "--trace", str(trace_path), "--no-progress"]
    )  # fmt: skip
    assert code == 0
    err = capsys.readouterr().err
    assert "no --records: calibrating eager at 12, 16 px" in err
    calibration = [json.loads(line) for line in open(f"{trace_path}.calibration.jsonl")]
    # a size measured again after interference appears twice; its last line counts
    assert sorted({c["config"]["resolution"][0] for c in calibration}) == [12, 16]
    assert all(c["status"] == "ok" for c in calibration)
    trace = read_trace(trace_path)
    assert [t["resolution"] for t in trace] == [16] * 5  # a loose deadline: the largest
    check_trace(trace, model, data[0][:5], data[1][:5])


def test_a_target_nothing_meets_is_said_and_traced(tmp_path, model, data, records, capsys):
    trace_path = tmp_path / "trace.jsonl"
    code = main(
        ["run", "--model", MODEL, "--source", "fashion-mnist", "--max-latency-ms", "0.01",
         "--records", str(records), "--frames", "6", "--trace", str(trace_path),
         "--no-progress"]
    )  # fmt: skip
    assert code == 0
    captured = capsys.readouterr()
    assert "no ladder size meets 0.01 ms per frame" in captured.err
    assert "running at the smallest size, 16 px" in captured.err
    trace = read_trace(trace_path)
    assert [t["resolution"] for t in trace] == [16] * 6 and not any(t["met"] for t in trace)


def test_video_with_a_corrupt_frame_skips_and_counts_it(tmp_path, data):
    images, labels = data
    video = tmp_path / "intra.mkv"
    encode_video(video, images, codec="ffv1")  # intra-only: one packet per frame
    with av.open(str(video)) as container:
        packets = [(p.pos, p.size) for p in container.demux(video=0) if p.size]
    raw = bytearray(video.read_bytes())
    position, size = packets[4]
    for k in range(position + 5, position + size - 2):
        raw[k] ^= 0x5A
    broken = tmp_path / "broken.mkv"
    broken.write_bytes(bytes(raw))
    source = VideoSource(broken, labels=[int(v) for v in labels])
    frames = list(source)
    assert source.skipped.count == 1 and "frame at 0.133 s" in source.skipped.reasons[0]
    assert [f.index for f in frames] == [i for i in range(N) if i != 4]
    assert [f.label for f in frames] == [int(labels[i]) for i in range(N) if i != 4]
    for f in frames:  # FFV1 is lossless
        assert torch.equal(f.image, images[f.index])


def test_bad_inputs_give_clear_errors(tmp_path, records, capsys):
    def run(*args):
        code = main(["run", "--model", MODEL, "--no-progress", *args])
        return code, capsys.readouterr().err

    code, err = run("--source", str(tmp_path / "missing.mp4"), "--target-fps", "30")
    assert code == 2 and "is neither an existing video file" in err
    junk = tmp_path / "junk.mp4"
    junk.write_text("this is not a video")
    code, err = run("--source", str(junk), "--target-fps", "30", "--records", str(records))
    assert code == 2 and "cannot open" in err and "as a video" in err
    code, err = run("--source", "fashion-mnist", "--target-fps", "30", "--controller", "pid")
    assert code == 2 and "expected predictive, step or fixed:R" in err
    code, err = run("--source", "fashion-mnist", "--target-fps", "-3", "--records", str(records))
    assert code == 2 and "target_fps must be > 0" in err
    code, err = run("--source", "fashion-mnist", "--target-fps", "30", "--records", "nope.jsonl")
    assert code == 2 and "records file nope.jsonl does not exist" in err
    code, err = run(
        "--source", "fashion-mnist", "--target-fps", "30", "--records", str(records),
        "--controller", "fixed:26",
    )  # fmt: skip
    assert code == 2 and "not on the ladder" in err
    with pytest.raises(SystemExit) as exit_info:
        main(["run", "--model", MODEL, "--source", "x", "--target-fps", "3",
              "--max-latency-ms", "3"])  # fmt: skip
    assert exit_info.value.code == 2
    labels = tmp_path / "labels.txt"
    labels.write_text("1\ncat\n")
    with pytest.raises(ValueError, match="line 2: expected one class index"):
        VideoSource(_tiny_video(tmp_path), labels=labels)
    with pytest.raises(ValueError, match="labels files are for video sources"):
        open_source("fashion-mnist", labels=labels)
    assert len(DatasetSource("fashion-mnist")) == 10000


def _tiny_video(tmp_path):
    path = tmp_path / "tiny.mkv"
    encode_video(path, [torch.zeros(1, 28, 28, dtype=torch.uint8)], codec="ffv1")
    return path


def test_decoded_video_frames_are_grey(tmp_path):
    path = _tiny_video(tmp_path)
    (frame,) = list(VideoSource(path))
    assert frame.image.shape == (1, 28, 28) and frame.image.dtype == torch.uint8
    assert np.count_nonzero(frame.image.numpy()) == 0


def test_run_plot_draws_the_trace(tmp_path, records, capsys, monkeypatch):
    import tempfile

    from PIL import Image

    from vitres.runtime.trace_plot import plot_trace

    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    out = tmp_path / "run.png"
    argv = ["run", "--model", MODEL, "--source", "fashion-mnist", "--records", str(records),
            "--target-fps", "200", "--frames", "40", "--no-progress", "--plot", str(out)]  # fmt: skip
    assert main(argv) == 0
    assert f"wrote {out}" in capsys.readouterr().out
    image = Image.open(out)
    assert image.format == "PNG" and image.size[0] > 600
    assert not list(scratch.iterdir())  # the scratch trace is not left behind
    frames = [{"frame": i, "resolution": 16 + 4 * (i % 2), "latency_ms": 1.0 + i % 3,
               "deadline_ms": 2.5, "met": 1.0 + i % 3 <= 2.5} for i in range(30)]  # fmt: skip
    assert plot_trace(frames, tmp_path / "p.png").is_file()
    with pytest.raises(ValueError, match="no frames"):
        plot_trace([], tmp_path / "q.png")
    (tmp_path / "a_file").write_text("x")
    assert main([*argv[:-1], str(tmp_path / "a_file" / "x.png")]) == 2  # refused before running
    assert "a_file is a file, not a folder" in capsys.readouterr().err


def fake_calibrate(calls):
    """A calibration of 12 and 16 px at 0.2 / 0.3 ms, made without timing anything."""
    from vitres.measure import latency_stats
    from vitres.runtime.calibration import Calibration, CalibrationPoint

    def calibrate(model, sizes, **options):
        calls.append(list(sizes))
        points = [
            CalibrationPoint(
                (s, s), 1, latency_stats([s / 60000] * 20), (s // 4) ** 2, (s // 4, s // 4)
            )
            for s in sizes
        ]
        return Calibration("eager", "fp32", "cpu", 1, 4, points=points)

    return calibrate


def test_run_without_records_keeps_its_calibration_for_reuse(tmp_path, model, monkeypatch, capsys):
    import tempfile

    import vitres.runtime.session as session

    temp_root = tmp_path / "tmp"
    temp_root.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(temp_root))
    monkeypatch.chdir(tmp_path)
    calls = []
    monkeypatch.setattr(session, "calibrate", fake_calibrate(calls))
    args = ["run", "--model", MODEL, "--source", "fashion-mnist", "--max-latency-ms", "1000",
            "--ladder", "12,16", "--frames", "2", "--no-progress"]  # fmt: skip
    assert main(args) == 0
    assert calls == [[12, 16]]
    saved = tmp_path / "vitres-run-calibration.jsonl"
    lines = [json.loads(line) for line in saved.open()]
    assert [(r["config"]["resolution"], r["latency"]["median_ms"]) for r in lines] == [
        ([12, 12], pytest.approx(0.2)),
        ([16, 16], pytest.approx(16 / 60)),
    ]
    err = capsys.readouterr().err.splitlines()
    kept = [line for line in err if line.startswith("calibration kept in")]
    assert kept == [
        "calibration kept in vitres-run-calibration.jsonl; pass --records "
        "vitres-run-calibration.jsonl to reuse it and skip calibrating"
    ]
    assert not list(temp_root.iterdir())  # no vitres-run-* temporary folder left behind
    # the kept file is a records file: a second run reuses it and calibrates nothing
    assert main(args + ["--records", str(saved)]) == 0
    assert calls == [[12, 16]]
    assert "calibrating" not in capsys.readouterr().err
