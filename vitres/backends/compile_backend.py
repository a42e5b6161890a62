"""``compile`` / ``compile-bf16``: the model compiled by ``torch.compile`` (TorchInductor,
which generates C++/OpenMP kernels on the CPU and needs a C++ compiler).

``prepare`` compiles and runs the model once at the build shape, so ``build_time_s`` holds
the compile time and ``run`` is never the first call. Weights are frozen into the graph
(``freezing``: constant folding and oneDNN weight prepacking; inference only).

Recompiles. Dynamo specialises the first graph to the first input shape; a new batch
size or resolution triggers a recompile, after which "automatic dynamic" shapes usually
serve further sizes without one. Every graph compilation goes through this backend's
counting compiler, so ``compiles`` (graphs compiled so far) and ``recompiles`` (compiles
after the first) are exact without parsing logs.
"""

from __future__ import annotations

import shutil
import time
from typing import Any

import torch
from torch import Tensor, nn

from vitres.backends.base import Backend, register_backend


@register_backend
class CompileBackend(Backend):
    """``torch.compile`` with Inductor, float32.

    Args:
        device: ``"cpu"`` (or a CUDA device).
        dynamic: ``torch.compile``'s ``dynamic``: ``None`` = specialise, then go dynamic
            on the first shape change; ``True`` = symbolic shapes from the start;
            ``False`` = recompile for every new shape.
        freezing: Freeze weights into the graph (Inductor ``freezing``).
        mode: ``None`` or ``"max-autotune"`` (Inductor autotuning; slower to build).
        compiler: ``"inductor"`` (generated kernels), or ``"eager"``: Dynamo capture and
            guards without code generation -- same recompile behaviour, seconds to build;
            for tests and for telling capture problems from Inductor ones.
    """

    name = "compile"
    precision = "fp32"
    dynamic_batch = True
    token_merging = True
    dtype = torch.float32

    def __init__(
        self,
        device: str = "cpu",
        dynamic: bool | None = None,
        freezing: bool = True,
        mode: str | None = None,
        compiler: str = "inductor",
    ) -> None:
        super().__init__(device)
        if compiler not in ("inductor", "eager"):
            raise ValueError(f"compiler must be 'inductor' or 'eager', got {compiler!r}")
        self.compiler = compiler
        self.dynamic = dynamic
        self.freezing = freezing
        self.mode = mode
        self.compiles = 0
        self.compile_time_s = 0.0
        self.shapes_seen: list[tuple[int, ...]] = []

    @property
    def recompiles(self) -> int:
        """Graph compilations after the first one (shape changes, guard failures)."""
        return max(0, self.compiles - 1)

    def _compiler(self, gm: torch.fx.GraphModule, example_inputs: list[Any]) -> Any:
        from torch._inductor.compile_fx import compile_fx

        self.compiles += 1
        if self.compiler == "eager":
            return gm.forward
        start = time.perf_counter()
        patches: dict[str, Any] = {"freezing": self.freezing}
        if self.mode == "max-autotune":
            patches["max_autotune"] = True
        compiled = compile_fx(gm, example_inputs, config_patches=patches)
        self.compile_time_s += time.perf_counter() - start
        return compiled

    def build(self, model: nn.Module, input_shape: tuple[int, ...]) -> None:
        self.model = model.eval().to(device=self.device, dtype=self.dtype)
        for parameter in self.model.parameters():
            parameter.requires_grad_(False)
        self.compiled = torch.compile(self.model, backend=self._compiler, dynamic=self.dynamic)
        self.run(torch.zeros(input_shape))

    def run(self, batch: Tensor) -> Tensor:
        shape = tuple(batch.shape)
        if shape not in self.shapes_seen:
            self.shapes_seen.append(shape)
        with torch.inference_mode():
            logits = self.compiled(batch.to(device=self.device, dtype=self.dtype))
        return logits.float()

    def stats(self) -> dict[str, Any]:
        """Compiles, recompiles, compile seconds and the input shapes seen so far."""
        return {
            "compiles": self.compiles,
            "recompiles": self.recompiles,
            "compile_time_s": self.compile_time_s,
            "shapes_seen": [list(s) for s in self.shapes_seen],
        }

    @classmethod
    def availability(cls) -> tuple[bool, str]:
        if not hasattr(torch, "compile"):
            return False, "torch.compile needs torch >= 2.0"
        if not any(shutil.which(cc) for cc in ("g++", "c++", "clang++")):
            return False, "TorchInductor on the CPU needs a C++ compiler: install g++"
        return True, ""


@register_backend
class CompileBF16Backend(CompileBackend):
    """``torch.compile`` of the model cast to bfloat16 (float32 logits)."""

    name = "compile-bf16"
    precision = "bf16"
    dtype = torch.bfloat16
