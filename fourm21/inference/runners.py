"""What runs the network: PyTorch, ONNX Runtime or a torch.export program, behind one small protocol.

A runner maps a normalised (B, 3, S, S) batch to either the network's raw outputs (``{task: {key: tensor}}``)
or, for an end-to-end ONNX graph with decoding inside, ``decode_batch``'s flat outputs (``decoded = True``).
Either way ``fourm21.inference.decode`` finishes the job, so every runner's predictions come from one decoder.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

import torch

from fourm21.inference.raw_outputs import restore_outputs
from fourm21.models.multitask import MultiTaskNet

RawOrDecoded = dict[str, dict[str, torch.Tensor]] | dict[str, torch.Tensor]


class Runner(Protocol):
    decoded: bool  # True: __call__ returns decode_batch's flat outputs (decoding inside the graph)

    def __call__(self, images: torch.Tensor, caption_tokens: torch.Tensor | None = None) -> RawOrDecoded: ...


class TorchRunner:
    """The PyTorch network, fed channels-last on a CPU, where oneDNN convolutions then skip their layout
    reorders (lite's eager forward: 10-25 % faster on the 2-core dev CPU; default and ViT: unchanged)."""

    decoded = False

    def __init__(self, net: MultiTaskNet) -> None:
        self.net = net.eval()

    def network_input(self, images: torch.Tensor) -> torch.Tensor:
        if images.device.type == "cpu" and images.dim() == 4:
            return images.contiguous(memory_format=torch.channels_last)
        return images

    @torch.no_grad()
    def __call__(self, images: torch.Tensor, caption_tokens: torch.Tensor | None = None) -> RawOrDecoded:
        return self.net(self.network_input(images), caption_tokens)


class OnnxRunner:
    """An ONNX Runtime session over ``model.onnx``: raw head outputs (named ``task.key``) or, for an
    end-to-end graph (an output named ``det_batch_index``), decoded ones."""

    def __init__(self, path: Path, device: str | torch.device = "cpu") -> None:
        import onnxruntime as ort

        providers = ["CUDAExecutionProvider", "CPUExecutionProvider"] if str(device).startswith("cuda") else \
            ["CPUExecutionProvider"]
        self.session = ort.InferenceSession(str(path), providers=providers)
        self.names = [o.name for o in self.session.get_outputs()]
        self.decoded = "det_batch_index" in self.names

    def __call__(self, images: torch.Tensor, caption_tokens: torch.Tensor | None = None) -> RawOrDecoded:
        arrays = [torch.from_numpy(a) for a in self.session.run(self.names, {"images": images.detach().cpu().numpy()})]
        if self.decoded:
            return dict(zip(self.names, arrays))
        return restore_outputs(self.names, arrays)


class ExportedProgramRunner:
    """A ``torch.export`` program (``model.pt2``) returning the raw outputs ``output_names`` lists."""

    decoded = False

    def __init__(self, path: Path, output_names: list[str], device: str | torch.device = "cpu") -> None:
        self.program = torch.export.load(str(path)).module().to(device)
        self.names = list(output_names)

    @torch.no_grad()
    def __call__(self, images: torch.Tensor, caption_tokens: torch.Tensor | None = None) -> RawOrDecoded:
        return restore_outputs(self.names, [t.cpu() for t in self.program(images)])
