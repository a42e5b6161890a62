"""The CUDA-graph backend's logic, checked on the CPU: batch buckets, the LRU of graphs
and its memory bounds, refusing shapes it has no graph for, never replaying one shape's
graph for another, and replay giving the eager result without recording again.

A CUDA graph cannot be recorded without a GPU, so these tests put a CPU stand-in behind
the same protocol (a static input, a static output, a replay that recomputes the output
from the input); everything around the recording is the backend's own code.
"""

from __future__ import annotations

import pytest
import torch

import vitres
from vitres.backends import backend_class, get_backend
from vitres.backends.cudagraph import (
    CudaGraphBackend,
    GraphEntry,
    ShapeGraphs,
    batch_buckets,
    bucket_for,
    run_bucketed,
)


def test_batch_buckets_are_powers_of_two_up_to_the_prepared_batch():
    assert batch_buckets(1) == [1]
    assert batch_buckets(8) == [1, 2, 4, 8]
    assert batch_buckets(6) == [1, 2, 4, 6]
    assert [bucket_for(b, 6) for b in range(1, 7)] == [1, 2, 4, 4, 6, 6]
    with pytest.raises(ValueError, match="1..6"):
        bucket_for(7, 6)
    with pytest.raises(ValueError, match="at least 1"):
        batch_buckets(0)


class FakeRecorder:
    """Records a 'graph' per shape whose replay writes ``2 * input`` into its output."""

    def __init__(self, nbytes: int = 100) -> None:
        self.recorded: list[tuple[int, ...]] = []
        self.nbytes = nbytes

    def __call__(self, shape):
        self.recorded.append(shape)
        static_in = torch.zeros(shape)
        static_out = torch.zeros(shape)
        return GraphEntry(
            static_in, static_out, lambda: static_out.copy_(2 * static_in), self.nbytes
        )


def test_each_shape_gets_its_own_graph_and_the_least_recently_used_goes_first():
    recorder = FakeRecorder()
    graphs = ShapeGraphs(recorder, max_graphs=2)
    a, b, c = (1, 3, 8, 8), (1, 3, 8, 12), (1, 3, 12, 8)
    first = graphs.get(a)
    assert graphs.get(b) is not first  # another size never reuses a's graph
    assert graphs.get(a) is first and graphs.captures == 2  # a hit records nothing
    graphs.get(c)  # full: b (least recently used) goes, a stays
    assert graphs.shapes == [a, c] and graphs.evictions == 1
    graphs.get(b)
    assert recorder.recorded == [a, b, c, b] and graphs.shapes == [c, b]


def test_memory_bounds_evict_old_graphs_but_keep_the_new_one():
    graphs = ShapeGraphs(FakeRecorder(nbytes=400), max_bytes=1000)
    for width in (8, 12, 16):
        graphs.get((1, 1, 8, width))
    assert len(graphs) == 2 and graphs.nbytes == 800  # the third pushed the first out
    lone = ShapeGraphs(FakeRecorder(nbytes=5000), max_bytes=1000)
    lone.get((1, 1, 8, 8))
    assert len(lone) == 1  # bigger than the bound alone: still served, nothing else kept

    graphs = ShapeGraphs(FakeRecorder(), free_bytes=lambda: (1000 - 350 * len(graphs), 1000))
    for width in (4, 8, 12, 16):  # free before each: 1000, 650, 300, then -50 < the 10 % reserve
        graphs.get((1, 1, 4, width))
    assert graphs.evictions == 1 and graphs.shapes == [(1, 1, 4, w) for w in (8, 12, 16)]


def test_a_shape_without_a_graph_is_refused_when_recording_is_off():
    graphs = ShapeGraphs(FakeRecorder(), allow_new_shapes=False)
    with pytest.raises(ValueError, match=r"no CUDA graph for input shape 1x3x8x8.*recorded shapes"):
        graphs.get((1, 3, 8, 8))


def test_run_bucketed_pads_to_the_bucket_splits_large_batches_and_copies_out():
    recorder = FakeRecorder()
    graphs = ShapeGraphs(recorder)
    x = torch.arange(11 * 2.0).reshape(11, 1, 1, 2)
    out = run_bucketed(graphs, x, max_batch=8)
    assert torch.equal(out, 2 * x)
    assert recorder.recorded == [(8, 1, 1, 2), (4, 1, 1, 2)]  # 8, then 3 padded to 4
    again = run_bucketed(graphs, x[:3] + 100, max_batch=8)
    assert torch.equal(out, 2 * x)  # the first result was copied out, not overwritten
    assert torch.equal(again, 2 * (x[:3] + 100)) and len(recorder.recorded) == 2
    with pytest.raises(ValueError, match="graph reads"):
        run_bucketed(graphs, x.double(), max_batch=8)


class EagerRecordedBackend(CudaGraphBackend):
    """The CUDA-graph backend with the recording replaced by a CPU stand-in: replay runs
    the model on the static input into the static output, as a replayed graph does."""

    name = "test-eager-recorded"

    def _check_device(self) -> None:  # the real one requires CUDA
        pass

    def _record(self, shape):
        static_in = torch.zeros(shape, dtype=self.dtype)
        with torch.inference_mode():
            static_out = self.fn(static_in).clone()

        def replay():
            with torch.inference_mode():
                static_out.copy_(self.fn(static_in))

        return GraphEntry(static_in, static_out, replay, static_in.nbytes)


@pytest.fixture(scope="module")
def tiny_vit():
    torch.manual_seed(0)
    return vitres.create_model(
        "vit_tiny_patch4",
        img_size=16,
        in_chans=1,
        num_classes=3,
        embed_dim=32,
        depth=2,
        num_heads=2,
    ).eval()


def test_replay_gives_the_eager_result_and_switching_sizes_records_nothing(tiny_vit):
    backend = EagerRecordedBackend(device="cpu", compiler="none", allow_new_shapes=False)
    backend.prepare(tiny_vit, (4, 1, 16, 16))
    backend.record([(4, 1, 24, 16)])  # a second resolution, as a server or a ladder warms
    assert backend.stats()["captures"] == 6  # buckets 1, 2, 4 at each of the two sizes
    generator = torch.Generator().manual_seed(1)
    for size in [(16, 16), (24, 16), (16, 16), (24, 16)]:
        for batch in (1, 3, 4):
            x = torch.randn(batch, 1, *size, generator=generator)
            padding = x.new_zeros(bucket_for(batch, 4) - batch, *x.shape[1:])
            with torch.inference_mode():
                expected = tiny_vit(torch.cat([x, padding]))
            # the same numbers as eager at the bucket's batch size
            assert torch.equal(backend.run(x), expected[:batch])
    assert backend.stats()["captures"] == 6 and backend.stats()["evictions"] == 0
    with pytest.raises(ValueError, match="no CUDA graph for input shape 1x1x20x16"):
        backend.run(torch.zeros(1, 1, 20, 16))  # never prepared: refused, not another's graph


def test_the_cuda_backends_refuse_a_cpu_device_and_say_why_they_are_unavailable(tiny_vit):
    for name in ("cudagraph", "cudagraph-bf16"):
        usable, reason = backend_class(name).availability()
        if not torch.cuda.is_available():
            assert not usable and "NVIDIA GPU" in reason
            with pytest.raises(RuntimeError, match="not available here: CUDA graphs need"):
                get_backend(name)
    with pytest.raises(ValueError, match="needs a CUDA device.*compile or eager"):
        CudaGraphBackend(device="cpu").prepare(tiny_vit, (1, 1, 16, 16))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="records real CUDA graphs: needs a GPU")
@pytest.mark.parametrize("name, compiler", [("cudagraph", "none"), ("cudagraph-bf16", "inductor")])
def test_real_cuda_graphs_replay_the_eager_result(name, compiler):
    """On a GPU: each bucket's replayed graph gives eager's logits at that batch (same
    dtype, same kernels up to Inductor's fusion), and a switch records nothing."""
    torch.manual_seed(0)
    model = vitres.create_model("vit_tiny_patch16", img_size=64, num_classes=16).eval().cuda()
    backend = get_backend(name, device="cuda", allow_new_shapes=False, compiler=compiler)
    dtype = backend.dtype
    eager = vitres.create_model("vit_tiny_patch16", img_size=64, num_classes=16)
    eager.load_state_dict(model.state_dict())
    eager = eager.eval().cuda().to(dtype)
    backend.prepare(model, (4, 3, 64, 64))
    backend.record([(4, 3, 48, 80)])
    recorded = backend.stats()["captures"]
    for size in [(64, 64), (48, 80), (64, 64)]:
        for batch in (1, 3, 4):
            x = torch.randn(batch, 3, *size, device="cuda")
            padding = x.new_zeros(bucket_for(batch, 4) - batch, 3, *size)
            with torch.inference_mode():
                expected = eager(torch.cat([x, padding]).to(dtype)).float()[:batch]
            got = backend.run(x)
            tolerance = 2e-2 if dtype == torch.bfloat16 else 1e-4
            assert (got - expected).abs().max() <= tolerance * (1 + expected.abs().max())
    assert backend.stats()["captures"] == recorded
    assert backend.stats()["graph_memory_mb"] > 0
    backend.close()


def test_models_that_compute_on_the_host_per_call_are_refused(tiny_vit):
    from vitres.backends.cudagraph import check_recordable
    from vitres.models.common import FixedPatchSize

    check_recordable(tiny_vit)  # a learned table on the device: recordable
    check_recordable(FixedPatchSize(tiny_vit, 4))  # its own patch size
    sincos = vitres.create_model(
        "vit_tiny_patch4", img_size=16, in_chans=1, num_classes=3, embed_dim=32, depth=1,
        num_heads=2, pos_embed="sincos",
    )  # fmt: skip
    with pytest.raises(ValueError, match="'sincos' position embedding is computed per grid"):
        check_recordable(sincos)
    rotary = vitres.create_model(
        "vit_tiny_patch4", img_size=16, in_chans=1, num_classes=3, embed_dim=32, depth=1,
        num_heads=2, pos_embed_rope=True, rope_coords="index",
    )  # fmt: skip
    with pytest.raises(ValueError, match="rotary embedding is computed per grid"):
        check_recordable(rotary)  # a learned table and RoPE (EVA-02)
    with pytest.raises(ValueError, match="resized to 2 px per call.*compile-bf16"):
        check_recordable(FixedPatchSize(tiny_vit, 2))
    with pytest.raises(ValueError, match="record vitres models"):
        check_recordable(torch.nn.Linear(2, 2))
    backend = EagerRecordedBackend(device="cpu", compiler="none")
    with pytest.raises(ValueError, match="'sincos' position embedding"):
        backend.prepare(sincos, (1, 1, 16, 16))
