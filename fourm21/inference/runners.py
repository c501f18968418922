"""What runs the network: PyTorch, ONNX Runtime, a torch.export program or OpenVINO, behind one small protocol.

A runner maps a normalised (B, 3, S, S) batch to either the network's raw outputs (``{task: {key: tensor}}``)
or, for an end-to-end ONNX graph with decoding inside, ``decode_batch``'s flat outputs (``decoded = True``).
Either way ``fourm21.inference.decode`` finishes the job, so every runner's predictions come from one decoder.
"""

from __future__ import annotations

import threading
from collections.abc import Collection
from pathlib import Path
from typing import Protocol

import torch

from fourm21.errors import CheckpointError
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


def decodes_inside(names: list[str], decoded_keys: Collection[str]) -> bool:
    """Whether a graph with outputs ``names`` is an end-to-end one: its outputs are decoded predictions (the
    tasks' ``decoded_keys``), not raw head outputs (``task.key``)."""
    return bool(set(names) & set(decoded_keys))


class OnnxRunner:
    """An ONNX Runtime session over ``model.onnx``: raw head outputs (named ``task.key``) or, for an
    end-to-end graph (outputs among ``decoded_keys``, the tasks' decoded outputs), decoded ones."""

    def __init__(self, path: Path, device: str | torch.device = "cpu", decoded_keys: Collection[str] = ()) -> None:
        import onnxruntime as ort

        providers = ["CUDAExecutionProvider", "CPUExecutionProvider"] if str(device).startswith("cuda") else \
            ["CPUExecutionProvider"]
        self.session = ort.InferenceSession(str(path), providers=providers)
        self.names = [o.name for o in self.session.get_outputs()]
        self.decoded = decodes_inside(self.names, decoded_keys)

    def __call__(self, images: torch.Tensor, caption_tokens: torch.Tensor | None = None) -> RawOrDecoded:
        pixels = images.detach().cpu().float().numpy()  # the graph's input: float pixels (it normalises them)
        arrays = [torch.from_numpy(a) for a in self.session.run(self.names, {"images": pixels})]
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
        return restore_outputs(self.names, [t.cpu() for t in self.program(images.float())])


class OpenVinoRunner:
    """An OpenVINO IR (``model.xml`` + ``model.bin``) in OpenVINO's CPU plugin: raw head outputs (named
    ``task.key``) or, for an IR of the end-to-end graph (outputs among ``decoded_keys``), decoded ones.

    The IR has a dynamic batch; each input shape met is compiled as a static copy of it (0.2 s, once; up
    to ``max_shapes``, then the dynamic one), as the plugin runs static shapes 10-25 % faster (the default
    and lite models at 320 px on the 2-core dev CPU). ``precision`` is its inference precision: ``f32``
    (what the export check compares with PyTorch) or ``bf16`` (faster on CPUs with AMX / AVX-512 BF16,
    outputs ~1e-2 off); the plugin's own default would be bf16 on such CPUs, so it is always set. Runs on
    the CPU whatever ``device`` the model is on; outputs are CPU tensors."""

    def __init__(self, path: Path, output_names: list[str] | None = None, precision: str = "f32",
                 threads: int | None = None, max_shapes: int = 4, decoded_keys: Collection[str] = ()) -> None:
        import openvino as ov

        self.core = ov.Core()
        self.model = self.core.read_model(str(path))
        self.config: dict[str, object] = {"INFERENCE_PRECISION_HINT": precision, "PERFORMANCE_HINT": "LATENCY"}
        if threads:
            self.config["INFERENCE_NUM_THREADS"] = int(threads)
        graph_names = [o.any_name for o in self.model.outputs]
        self.names = list(output_names) if output_names else graph_names
        missing = sorted(set(self.names) - {n for o in self.model.outputs for n in o.get_names()})
        if missing:
            raise CheckpointError(f"{path}: the graph has no output(s) {missing} (it has {graph_names})")
        self.decoded = decodes_inside(self.names, decoded_keys)
        self.max_shapes = max_shapes
        self.requests: dict[tuple[int, ...], object] = {}
        self.dynamic = None
        self.lock = threading.Lock()  # an infer request runs one call at a time
        shape = self.model.input("images").get_partial_shape()
        if all(d.is_static for d in shape[1:]):  # the usual case, batch 1, compiled now
            self.request_for((1, *(d.get_length() for d in shape[1:])))
        request = next(iter(self.requests.values()), None) or self.request_for(None)
        self.precision = request.get_compiled_model().get_property("INFERENCE_PRECISION_HINT").get_type_name()

    def request_for(self, shape: tuple[int, ...] | None):
        """The infer request of a static copy compiled for ``shape`` (None or past ``max_shapes``: the dynamic IR)."""
        if shape in self.requests:
            return self.requests[shape]
        if shape is None or len(self.requests) >= self.max_shapes:
            if self.dynamic is None:
                self.dynamic = self.core.compile_model(self.model, "CPU", self.config).create_infer_request()
            return self.dynamic
        static = self.model.clone()
        static.reshape({"images": list(shape)})
        self.requests[shape] = self.core.compile_model(static, "CPU", self.config).create_infer_request()
        return self.requests[shape]

    def run(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """The graph's outputs by name, as CPU tensors (``infer`` copies them out of the request's buffers)."""
        array = images.detach().cpu().float().contiguous().numpy()
        with self.lock:
            result = self.request_for(tuple(array.shape)).infer({"images": array})
            return {n: torch.from_numpy(result[n]) for n in self.names}

    def __call__(self, images: torch.Tensor, caption_tokens: torch.Tensor | None = None) -> RawOrDecoded:
        arrays = self.run(images)
        if self.decoded:
            return arrays
        return restore_outputs(self.names, [arrays[n] for n in self.names])
