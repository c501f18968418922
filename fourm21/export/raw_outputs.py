"""The network as a function of images only, returning its raw head outputs as a flat tuple.

Exported graphs (ONNX, torch.export) hold exactly this; anchor points are not outputs because
they depend only on the input size, and ``restore_outputs`` rebuilds them so the heads'
``postprocess`` decodes exported outputs by the same code path as the PyTorch model.
"""

from __future__ import annotations

import torch
from torch import nn

from fourm21.models.heads.detection import make_points
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


def restore_outputs(net: MultiTaskNet, names: list[str], tensors: list[torch.Tensor],
                    image_size: tuple[int, int]) -> dict[str, dict[str, torch.Tensor]]:
    """Flat exported outputs -> the model's ``{task: raw}`` dict (with anchor points), for ``postprocess``."""
    out: dict[str, dict[str, torch.Tensor]] = {}
    for name, t in zip(names, tensors):
        task, key = name.split(".", 1)
        out.setdefault(task, {})[key] = torch.as_tensor(t)
    if "det" in out:
        head = net.heads["det"]
        shapes = [(image_size[0] // s, image_size[1] // s) for s in head.strides]
        out["det"]["points"], out["det"]["point_strides"] = make_points(shapes, head.strides, torch.device("cpu"))
    return out
