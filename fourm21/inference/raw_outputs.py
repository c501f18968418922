"""The network as a function of images only, returning its raw head outputs as a flat tuple.

Exported graphs (ONNX, torch.export) hold exactly this; anchor points are not outputs because they
depend only on the input size (``fourm21.inference.decode`` rebuilds them from the strides), so exported
outputs, nested again by ``restore_outputs``, are decoded by the same code as the PyTorch model's.
"""

from __future__ import annotations

import torch
from torch import nn

from fourm21.models.multitask import MultiTaskNet

CONSTANT_KEYS = {"points", "point_strides"}


def output_names(net: MultiTaskNet, img_size: int = 64) -> list[str]:
    """``task.key`` for every raw tensor the exported graph returns, in order."""
    with torch.no_grad():
        out = net.eval()(torch.zeros(1, 3, img_size, img_size))
    return [f"{task}.{key}" for task, raw in out.items() for key in raw if key not in CONSTANT_KEYS]


class RawOutputs(nn.Module):
    def __init__(self, net: MultiTaskNet, names: list[str]) -> None:
        super().__init__()
        self.net = net
        self.names = names

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        out = self.net(images)
        return tuple(out[n.split(".")[0]][n.split(".", 1)[1]] for n in self.names)


def restore_outputs(names: list[str], tensors: list[torch.Tensor]) -> dict[str, dict[str, torch.Tensor]]:
    """Flat exported outputs named ``task.key`` -> the network's ``{task: raw}`` dict."""
    out: dict[str, dict[str, torch.Tensor]] = {}
    for name, t in zip(names, tensors):
        task, key = name.split(".", 1)
        out.setdefault(task, {})[key] = torch.as_tensor(t)
    return out
