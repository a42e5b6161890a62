"""The one --device grammar: every command that runs a model takes it, and a device this
machine cannot use is refused in one sentence before any work."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from vitres.devices import check_device, device_record

COMMANDS = [
    "eval",
    "sweep",
    "run",
    "serve",
    "train",
    "flexify",
    "probe",
    "explain",
    "ood",
    "export",
]


def test_check_device_grammar():
    assert check_device("cpu") == torch.device("cpu")
    for bad in ("gpu", "cuda:", "cuda:x", "CUDA", "mps", ""):
        with pytest.raises(ValueError, match="must be cpu, cuda or cuda:N"):
            check_device(bad)
    assert device_record("cpu") == {}


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without GPU")
def test_cuda_is_refused_here_in_one_sentence():
    for name in ("cuda", "cuda:0", "cuda:3"):
        with pytest.raises(ValueError, match="this machine has a CPU-only PyTorch build"):
            check_device(name)


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_takes_device(command):
    shown = subprocess.run(
        [sys.executable, "-m", "vitres", command, "--help"], capture_output=True, text=True
    )
    assert shown.returncode == 0 and "--device" in shown.stdout, shown.stderr


CUDA_LINES = {
    "eval": ["--model", "fmnist-vit-multires", "--res", "16"],
    "sweep": ["--model", "fmnist-vit-multires", "--res", "16"],
    "run": ["--model", "fmnist-vit-multires", "--source", "fashion-mnist", "--target-fps", "30"],
    "serve": ["--model", "fmnist-vit-multires", "--port", "0"],
    "explain": ["--model", "fmnist-vit-multires", "--image", "any.png"],
    "ood": ["--model", "fmnist-vit-multires"],
    "export": ["--model", "fmnist-vit-multires", "--out", "never.onnx"],
}


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without GPU")
@pytest.mark.parametrize("command", sorted(CUDA_LINES))
def test_commands_refuse_cuda_here_before_any_work(command, tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "vitres", command, *CUDA_LINES[command], "--device", "cuda"],
        capture_output=True, text=True, cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "CPU-only PyTorch build" in lines[0]
    assert list(tmp_path.iterdir()) == []  # nothing written
