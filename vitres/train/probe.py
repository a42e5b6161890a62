"""Linear and k-NN probes on a frozen backbone, at one or several resolutions.

The standard way to use a self-supervised or image-text backbone (DINOv2, CLIP, SigLIP)
for classification: its pooled features, frozen, and a linear classifier trained on
them. :func:`probe` extracts the features of a train and a test subset at each
resolution (cached by resolution in the output folder, so a killed run resumes where it
stopped), fits a multinomial logistic regression (full batch, L-BFGS, weight decay, the
features standardised), scores it and a cosine k-NN on the test subset with Wilson
intervals, and writes the backbone with the best resolution's head as a vitres
checkpoint (``model.safetensors`` + ``model.json``): a classifier every command takes
as ``--model``.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["ProbeConfig", "ProbeResult", "extract_features", "fit_linear", "knn_accuracy", "probe"]


@dataclass
class ProbeConfig:
    """A probe run.

    Attributes:
        model: The backbone (any model reference; its own head is ignored).
        data: ``fashion-mnist`` or an image folder (``train/`` and ``test/`` inside, or
            one folder for both).
        resolutions: Input sizes to probe at.
        out_dir: Where features, results and the checkpoint go.
        train_limit: Training images (the first N of the train split).
        test_limit: Test images (the first N of the test split).
        batch_size: Images per forward pass of the backbone.
        weight_decay: L2 penalty of the linear head.
        steps: L-BFGS iterations.
        k: Neighbours of the k-NN probe.
        data_dir: Folder of the Fashion-MNIST files.
        progress: Progress lines while extracting.
        device: Where the backbone runs (``cpu``, ``cuda``, ``cuda:N``); the features
            come back to the CPU, where the heads are fitted.
    """

    model: str
    data: str = "fashion-mnist"
    resolutions: tuple[int, ...] = (224,)
    out_dir: str = "runs/probe"
    train_limit: int = 2000
    test_limit: int = 2000
    batch_size: int = 64
    weight_decay: float = 1e-4
    steps: int = 200
    k: int = 20
    data_dir: str | None = None
    progress: bool = True
    device: str = "cpu"

    def __post_init__(self) -> None:
        self.resolutions = tuple(int(r) for r in self.resolutions)
        if not self.resolutions or min(self.resolutions) < 1:
            raise ValueError(f"resolutions must be positive sizes, got {self.resolutions}")
        for name in ("train_limit", "test_limit", "batch_size", "steps", "k"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")


@dataclass
class ProbeResult:
    """What :func:`probe` measured: per resolution the linear and k-NN test accuracy
    (with 95 % Wilson intervals), and the checkpoint of the best one."""

    rows: list[dict[str, Any]] = field(default_factory=list)
    best_resolution: int | None = None
    checkpoint: str | None = None
    classes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _features_of(model: nn.Module, x: Tensor) -> Tensor:
    tokens = model.forward_features(x)
    return model.forward_head(tokens, pre_logits=True)


def extract_features(
    model: nn.Module,
    dataset: Any,
    resolution: int,
    limit: int,
    batch_size: int,
    cache: Path | None = None,
    progress: bool = False,
) -> tuple[Tensor, Tensor]:
    """The pooled features ``(N, D)`` (on the CPU) and labels of the first ``limit``
    images at ``resolution``, computed on the model's device, read from ``cache`` when it
    holds them (written there otherwise, through a temporary file)."""
    from safetensors.torch import load_file, save_file

    from vitres.data import eval_batches
    from vitres.progress import progress_bar

    if cache is not None and cache.is_file():
        stored = load_file(str(cache))
        return stored["features"], stored["labels"]
    cfg = model.config
    device = next(model.parameters()).device
    total = min(limit, len(dataset))
    features, labels = [], []
    bar = progress_bar(total=total, desc=f"features at {resolution} px", unit="img",
                       disable=not progress)  # fmt: skip
    with torch.inference_mode():
        for x, y in eval_batches(dataset, resolution, batch_size, mean=cfg.mean, std=cfg.std,
                                 in_chans=cfg.in_chans, limit=limit):  # fmt: skip
            features.append(_features_of(model, x.to(device)).float().cpu())
            labels.append(y)
            bar.update(len(y))
    bar.close()
    result = torch.cat(features), torch.cat(labels).long()
    if cache is not None:
        partial = cache.with_name(cache.name + ".partial")
        save_file({"features": result[0].contiguous(), "labels": result[1]}, str(partial))
        partial.replace(cache)
    return result


def fit_linear(
    features: Tensor, labels: Tensor, num_classes: int, weight_decay: float, steps: int
) -> nn.Linear:
    """A multinomial logistic regression on standardised features (full batch, L-BFGS),
    returned as one ``nn.Linear`` on the raw features (the standardisation folded in)."""
    mean = features.mean(0)
    std = features.std(0).clamp_min(1e-6)
    z = (features - mean) / std
    torch.manual_seed(0)
    head = nn.Linear(z.shape[1], num_classes)
    nn.init.zeros_(head.weight)
    nn.init.zeros_(head.bias)
    optimizer = torch.optim.LBFGS(head.parameters(), max_iter=steps, line_search_fn="strong_wolfe")

    def closure() -> Tensor:
        optimizer.zero_grad()
        loss = nn.functional.cross_entropy(head(z), labels)
        loss = loss + 0.5 * weight_decay * head.weight.pow(2).sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    folded = nn.Linear(z.shape[1], num_classes)
    with torch.no_grad():  # W (x - m) / s + b = (W / s) x + (b - W m / s)
        folded.weight.copy_(head.weight / std)
        folded.bias.copy_(head.bias - (head.weight / std) @ mean)
    return folded


def knn_accuracy(train: Tensor, train_labels: Tensor, test: Tensor, test_labels: Tensor,
                 k: int) -> float:  # fmt: skip
    """Accuracy of a cosine-similarity k-NN vote (ties to the nearest neighbour's class)."""
    a = nn.functional.normalize(train, dim=1)
    b = nn.functional.normalize(test, dim=1)
    nearest = (b @ a.T).topk(min(k, len(a)), dim=1).indices
    votes = train_labels[nearest]
    correct = 0
    for row, truth in zip(votes.tolist(), test_labels.tolist()):
        counts: dict[int, int] = {}
        for label in row:
            counts[label] = counts.get(label, 0) + 1
        best = max(counts.values())
        winner = next(label for label in row if counts[label] == best)  # nearest among ties
        correct += int(winner == truth)
    return correct / len(test_labels)


def _classifier(backbone: nn.Module, head: nn.Linear) -> nn.Module:
    """The backbone with ``head`` as its classifier, as one vitres model."""
    from vitres.models.vit import VisionTransformer

    cfg = backbone.config
    config = type(cfg).from_dict({**cfg.to_dict(), "num_classes": head.out_features,
                                  "head_dist": False, "head_bias": True})  # fmt: skip
    model = VisionTransformer(config)
    state = {
        k: v for k, v in backbone.state_dict().items() if not k.startswith(("head.", "head_dist."))
    }
    state["head.weight"], state["head.bias"] = head.weight.detach(), head.bias.detach()
    model.load_state_dict(state)
    return model.eval()


def probe(config: ProbeConfig) -> ProbeResult:
    """Runs the probe (see the module docstring) and writes ``results.json`` beside the
    checkpoint.

    Raises:
        ValueError: a device this machine cannot use, a backbone that is not a ViT, or
            data with fewer than two classes.
    """
    from vitres.data import get_dataset
    from vitres.devices import check_device
    from vitres.models.resolve import resolve_model
    from vitres.models.vit import VisionTransformer
    from vitres.stats import wilson_interval

    device = check_device(config.device)
    backbone = resolve_model(config.model).eval().to(device)
    if not isinstance(backbone, VisionTransformer):
        raise ValueError(f"{config.model} is not a ViT; a probe reads a ViT's pooled features")
    in_chans = backbone.config.in_chans
    train = get_dataset(config.data, "train", data_dir=config.data_dir, in_chans=in_chans)
    test = get_dataset(config.data, "test", data_dir=config.data_dir, in_chans=in_chans)
    classes = list(getattr(train, "classes", ()))
    if len(classes) < 2:
        raise ValueError(f"{config.data} has {len(classes)} class(es); a probe needs at least two")
    out = Path(config.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    result = ProbeResult(classes=classes)
    heads: dict[int, nn.Linear] = {}
    for resolution in config.resolutions:
        cache = out / f"features-{resolution}px"
        tr_x, tr_y = extract_features(backbone, train, resolution, config.train_limit,
                                      config.batch_size, Path(f"{cache}-train-{config.train_limit}.safetensors"),
                                      config.progress)  # fmt: skip
        te_x, te_y = extract_features(backbone, test, resolution, config.test_limit,
                                      config.batch_size, Path(f"{cache}-test-{config.test_limit}.safetensors"),
                                      config.progress)  # fmt: skip
        head = fit_linear(tr_x, tr_y, len(classes), config.weight_decay, config.steps)
        with torch.no_grad():
            accuracy = float((head(te_x).argmax(1) == te_y).float().mean())
        knn = knn_accuracy(tr_x, tr_y, te_x, te_y, config.k)
        low, high = wilson_interval(accuracy, len(te_y))
        heads[resolution] = head
        result.rows.append({"resolution": resolution, "linear_accuracy": accuracy,
                            "linear_low95": low, "linear_high95": high, "knn_accuracy": knn,
                            "train_images": len(tr_y), "test_images": len(te_y),
                            "feature_dim": int(tr_x.shape[1])})  # fmt: skip
    best = max(result.rows, key=lambda r: (r["linear_accuracy"], -r["resolution"]))
    result.best_resolution = best["resolution"]
    from vitres.models.checkpoint import save_model

    model = _classifier(backbone, heads[result.best_resolution])
    meta = {"probe": {"backbone": config.model, "resolution": result.best_resolution,
                      "data": config.data, "train_images": best["train_images"],
                      "classes": classes, "device": str(device)}}  # fmt: skip
    result.checkpoint = str(save_model(model, out / "model.safetensors", metadata=meta))
    (out / "results.json").write_text(json.dumps(result.to_dict(), indent=2) + "\n")
    return result
