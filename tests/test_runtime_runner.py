"""AdaptiveRunner on a real model with a fake clock: every forward call advances the
clock by a scripted latency, so the runner's choices, its trace and its statistics are
checked exactly against a direct model call and a controller driven by hand."""

from __future__ import annotations

import pytest
import torch
from runtime_fixtures import linear_ms, record

import vitres
from vitres.backends import get_backend
from vitres.backends.eager import EagerBackend
from vitres.data import load_fashion_mnist, prepare_batch
from vitres.runtime.controller import PredictiveController
from vitres.runtime.latency import LatencyModel
from vitres.runtime.runner import AdaptiveRunner, frame_tensor

LADDER = [16, 20, 24, 28, 32]
ACCURACY = {16: 0.80, 20: 0.84, 24: 0.87, 28: 0.89, 32: 0.90}


def median_ms(side: int) -> float:
    return linear_ms((side // 4) ** 2)


def latency_model() -> LatencyModel:
    return LatencyModel.from_records(
        [record(s, median_ms(s), accuracy=ACCURACY[s]) for s in LADDER]
    )


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class ScriptedBackend(EagerBackend):
    """The real eager model; each call advances the fake clock by ``median(side) × load``
    and is logged."""

    def __init__(self, clock: FakeClock) -> None:
        super().__init__()
        self.clock = clock
        self.load = 1.0
        self.calls: list[int] = []

    def run(self, batch):
        side = batch.shape[-1]
        self.calls.append(side)
        self.clock.now += median_ms(side) * self.load / 1000.0
        return super().run(batch)


@pytest.fixture(scope="module")
def model():
    torch.set_num_threads(1)
    return vitres.load_model("fmnist-vit-multires")


@pytest.fixture(scope="module")
def frames():
    data = load_fashion_mnist("test")
    return data.images[:60], data.labels[:60]


def direct(model, image, side):
    x = prepare_batch(image[None], side, mean=model.config.mean, std=model.config.std, in_chans=1)
    with torch.inference_mode():
        probs = torch.softmax(model(x), dim=-1)[0]
    return int(probs.argmax()), float(probs.max())


def scripted_runner(model, deadline, **kwargs):
    clock = FakeClock()
    backend = ScriptedBackend(clock)
    backend.prepare(model, (1, 1, 28, 28))
    runner = AdaptiveRunner(
        backend, LADDER, max_latency_ms=deadline, records=latency_model(), clock=clock, **kwargs
    )
    return runner, backend


def test_every_ladder_size_is_warmed_before_the_first_frame(model, frames):
    runner, backend = scripted_runner(model, 8.2, warmup_calls=3)
    assert backend.calls == []
    runner.process(frames[0][0])
    warm = backend.calls[: 3 * len(LADDER)]
    assert warm == [s for s in LADDER for _ in range(3)]
    assert backend.calls[3 * len(LADDER) :] == [28]  # then the frame, at the chosen size
    # the warm-up timed each size at exactly its median: the correction starts at 1
    assert runner.correction.factor == pytest.approx(1.0)


def test_runner_follows_the_controller_and_traces_exact_values(model, frames):
    images, labels = frames
    runner, backend = scripted_runner(model, 8.2, controller="predictive")
    reference = PredictiveController(latency_model())
    size = reference.start(LADDER, 8.2)
    expected_sizes = []
    for i in range(60):
        backend.load = 2.0 if 20 <= i < 40 else 1.0
        result = runner.process(images[i], int(labels[i]))
        latency = median_ms(size) * backend.load
        expected_sizes.append(size)
        assert result.resolution == size and result.first_resolution == size
        assert result.latency_ms == pytest.approx(latency)
        assert result.met == (latency <= 8.2) and result.deadline_ms == 8.2
        assert (result.pred, result.confidence) == pytest.approx(direct(model, images[i], size))
        assert result.label == int(labels[i]) and result.frame == i
        size = reference.observe(size, latency, 8.2)
    assert expected_sizes[19:22] == [28, 28, 16]  # the load step at frame 20: one miss
    stats = runner.stats()
    assert stats.frames == 60 and stats.hits == 59
    assert stats.switches == sum(a != b for a, b in zip(expected_sizes, expected_sizes[1:]))
    assert stats.mean_resolution == pytest.approx(sum(expected_sizes) / 60)
    assert stats.expected_accuracy == pytest.approx(sum(ACCURACY[s] for s in expected_sizes) / 60)
    assert stats.accuracy == pytest.approx(
        sum(direct(model, images[i], s)[0] == labels[i] for i, s in enumerate(expected_sizes)) / 60
    )
    assert stats.frames_per_resolution == {
        s: expected_sizes.count(s) for s in sorted(set(expected_sizes))
    }
    assert runner.results[1].t_s == pytest.approx(median_ms(28) / 1000)


def test_escalation_reruns_unconfident_frames_when_the_budget_allows(model, frames):
    images, labels = frames
    # 20 px first (fixed), 3.5 ms; 24 px's p95 is 5.52 ms: 9.02 ms fit 9.2, not 8.9
    runner, backend = scripted_runner(model, 9.2, controller="fixed:20", escalate_below=0.9)
    tight, _ = scripted_runner(model, 8.9, controller="fixed:20", escalate_below=0.9)
    changed = fixed = broken = escalated = 0
    for i in range(30):
        result = runner.process(images[i], int(labels[i]))
        first_pred, confidence = direct(model, images[i], 20)
        assert result.first_pred == first_pred
        if confidence < 0.9:
            escalated += 1
            pred, _ = direct(model, images[i], 24)
            assert result.escalated and result.resolution == 24 and result.pred == pred
            assert result.latency_ms == pytest.approx(median_ms(20) + median_ms(24))
            changed += pred != first_pred
            fixed += first_pred != labels[i] and pred == labels[i]
            broken += first_pred == labels[i] and pred != labels[i]
        else:
            assert not result.escalated and result.resolution == 20
        # never escalated under the tighter deadline
        assert not tight.process(images[i], int(labels[i])).escalated
    stats = runner.stats()
    assert escalated > 0
    assert stats.escalations == escalated
    assert stats.escalation_ms == pytest.approx(escalated * median_ms(24))
    assert (stats.escalation_changed, stats.escalation_fixed, stats.escalation_broken) == (
        changed,
        fixed,
        broken,
    )


def test_a_deadline_nothing_meets_runs_at_the_smallest_size(model, frames):
    runner, _ = scripted_runner(model, 1.0, controller="predictive")
    results = [runner.process(frames[0][i]) for i in range(5)]
    assert [r.resolution for r in results] == [16] * 5
    assert runner.infeasible and runner.stats().infeasible
    assert runner.stats().hits == 0
    step, _ = scripted_runner(model, 1.0, controller="step")
    assert step.process(frames[0][0]).resolution == 16  # starts at the bottom, too


def test_deadline_change_takes_effect_on_the_next_frame(model, frames):
    runner, _ = scripted_runner(model, 8.2)
    assert runner.process(frames[0][0]).resolution == 28
    runner.set_deadline(max_latency_ms=5.0)
    second = runner.process(frames[0][1])
    assert second.deadline_ms == 5.0 and not second.met  # 28 px takes 5.9 ms
    assert runner.process(frames[0][2]).resolution == 20  # 4.2 × 1.15 ≤ 5
    runner.set_deadline(target_fps=100)
    assert runner.process(frames[0][3]).deadline_ms == pytest.approx(10.0)


@pytest.mark.parametrize("backend", ["eager", "eager-bf16", "onnxruntime"])
def test_real_backends_answer_like_the_model(model, frames, backend):
    from vitres.backends import backend_class

    if not backend_class(backend).availability()[0]:
        pytest.skip(f"{backend} not available")
    images, _ = frames
    ladder = [16, 28]
    options = {"threads": 1} if backend == "onnxruntime" else {}  # default graph cache
    copy = vitres.load_model("fmnist-vit-multires")  # bf16 casts its model in place
    runner = AdaptiveRunner(
        copy, ladder, max_latency_ms=1e6, controller="fixed:16", backend=backend,
        backend_options=options,
    )  # fmt: skip
    runner.warm_up()
    # one prepared backend serves both sizes (one dynamic ONNX graph)
    assert runner.backend_for(16) is runner.backend_for(28)
    reference = get_backend(backend, **options)
    reference.prepare(vitres.load_model("fmnist-vit-multires"), (1, 1, 16, 16))
    for i in range(10):
        result = runner.process(images[i])
        x = runner.preprocess(images[i], 16)
        assert result.pred == int(reference.run(x).argmax())
        if backend != "eager-bf16":
            assert result.pred == direct(model, images[i], 16)[0]


def test_bad_inputs(model, frames):
    with pytest.raises(ValueError, match="exactly one of target_fps"):
        AdaptiveRunner(model, LADDER, target_fps=30, max_latency_ms=5)
    with pytest.raises(ValueError, match="exactly one of target_fps"):
        AdaptiveRunner(model, LADDER)
    with pytest.raises(ValueError, match="predictive controller needs sweep records"):
        AdaptiveRunner(model, LADDER, target_fps=30)
    with pytest.raises(ValueError, match="escalation needs sweep records"):
        AdaptiveRunner(model, LADDER, target_fps=30, controller="step", escalate_below=0.5)
    with pytest.raises(ValueError, match="target_fps must be > 0"):
        AdaptiveRunner(model, LADDER, target_fps=0, controller="step")
    with pytest.raises(ValueError, match="not prepared"):
        AdaptiveRunner(EagerBackend(), LADDER, target_fps=30, controller="step")
    with pytest.raises(ValueError, match="nn.Module or a prepared vitres Backend"):
        AdaptiveRunner("fmnist", LADDER, target_fps=30, controller="step")
    with pytest.raises(FileNotFoundError, match="records file .* does not exist"):
        AdaptiveRunner(model, LADDER, target_fps=30, records="/nonexistent/results.jsonl")
    runner = AdaptiveRunner(model, [16], target_fps=30, controller="fixed:16")
    with pytest.raises(ValueError, match="frame tensor must be"):
        runner.process(torch.zeros(5, 28, 28, dtype=torch.uint8))
    with pytest.raises(ValueError, match="must be a tensor, numpy array or Pillow image"):
        runner.process([1, 2, 3])
    assert frame_tensor(frames[0][0][0].numpy()).shape == (1, 28, 28)
