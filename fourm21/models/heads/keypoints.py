"""Keypoints per detection location (anchor-free pose, as FCOS / YOLO-pose heads do): at every location of the
detection levels, K points and a visibility logit each, so a detection's keypoints are the ones predicted at
the location it was decoded from and ride with it through NMS."""

from __future__ import annotations

import torch
from torch import nn

from fourm21.models.heads.base import Head
from fourm21.models.heads.detection import make_points
from fourm21.models.neck import SharedTower


class KeypointHead(Head):
    """A tower over the levels at ``strides`` (the detection head's); per location K (x, y) offsets in strides
    from the location's centre and K visibility logits.

    ``sigmas`` (per-keypoint OKS sigmas), ``keypoint_names`` and ``skeleton`` (1-based pairs, COCO's) describe
    the keypoint set for the loss, the metrics and the drawings; ``kpt_thr``: the visibility probability at
    which a keypoint is drawn; ``l1_weight`` / ``vis_weight``: the loss terms beside the OKS loss;
    ``default_sigma``: each keypoint's sigma when ``sigmas`` is null.
    """

    def __init__(self, in_channels: int, strides: list[int], num_keypoints: int, sigmas: list[float] | None = None,
                 keypoint_names: list[str] | None = None, skeleton: list[list[int]] | None = None, num_convs: int = 2,
                 kpt_thr: float = 0.5, l1_weight: float = 1.0, vis_weight: float = 1.0,
                 default_sigma: float = 0.1, norm: str = "group") -> None:
        super().__init__()
        self.strides = list(strides)
        self.num_keypoints = int(num_keypoints)
        # fourm21-train fills these from the data first; a head built without them numbers its points
        self.sigmas = [float(s) for s in sigmas] if sigmas is not None else [float(default_sigma)] * self.num_keypoints
        self.keypoint_names = [str(n) for n in keypoint_names] if keypoint_names is not None else [
            str(k) for k in range(self.num_keypoints)]
        self.skeleton = [[int(a), int(b)] for a, b in skeleton or []]
        self.kpt_thr, self.l1_weight, self.vis_weight = float(kpt_thr), float(l1_weight), float(vis_weight)
        self.default_sigma = float(default_sigma)
        c = in_channels
        self.tower = SharedTower(c, num_convs, len(self.strides), norm=norm)
        self.pred = nn.Conv2d(c, 3 * self.num_keypoints, 3, padding=1)
        nn.init.normal_(self.pred.weight, std=0.01)  # start at the location's centre, half visible
        nn.init.zeros_(self.pred.bias)

    def forward(self, feats: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        """feats at ``strides`` -> kpt_xy (B, L, K, 2) in input pixels, kpt_logits (B, L, K) visibility."""
        k = self.num_keypoints
        outs = []
        for i, f in enumerate(feats):
            p = self.pred(self.tower(f, i))
            outs.append(p.flatten(2).transpose(1, 2))  # (B, HW, 3K)
        raw = torch.cat(outs, 1).float()  # pixel coordinates: bf16 would round them to 2-4 px at a few hundred
        b, n = raw.shape[:2]
        points, strides = make_points([f.shape[-2:] for f in feats], self.strides, feats[0].device)
        xy = raw[..., : 2 * k].reshape(b, n, k, 2) * strides[None, :, None, None] + points[None, :, None, :]
        return {"kpt_xy": xy, "kpt_logits": raw[..., 2 * k:]}
