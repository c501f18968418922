"""An end-to-end graph for export: network + box decoding + NMS + mask assembly, batched.

ONNX needs fixed-rank outputs, so detections of the whole batch come as one list with an image
index (as torchvision's and ultralytics' exported detectors do): ``det_batch_index`` (K,),
``det_boxes`` (K, 4) xyxy in input pixels, ``det_scores`` (K,), ``det_labels`` (K,),
``det_masks`` (K, Hp, Wp) mask probabilities at prototype resolution (upsample to the input size,
then zero outside the box, to get what ``InstanceMaskHead.postprocess`` gives).
The decoding mirrors ``DetectionHead.postprocess`` (same scores, top-k, threshold, per-class NMS
and ``max_det`` per image, the latter fixed at export). ``sem_labels`` follows the semantic head's
``label_stride``.
"""

from __future__ import annotations

import torch
from torch import nn
from torchvision.ops import batched_nms

from fourm21.losses.detection import decode_ltrb
from fourm21.models.heads.semantic import semantic_labels
from fourm21.models.multitask import MultiTaskNet

END2END_OUTPUTS = ("det_batch_index", "det_boxes", "det_scores", "det_labels", "det_masks", "cls_probs",
                   "sem_labels")


class EndToEnd(nn.Module):
    def __init__(self, net: MultiTaskNet) -> None:
        super().__init__()
        self.net = net
        if "det" not in net.heads:
            raise ValueError("end-to-end export needs the detection head")
        self.names = [n for n in END2END_OUTPUTS
                      if not (n == "det_masks" and "inst" not in net.heads)
                      and not (n == "cls_probs" and "cls" not in net.heads)
                      and not (n == "sem_labels" and "sem" not in net.heads)]

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        out = self.net(images)
        det, head = out["det"], self.net.heads["det"]
        scores = (det["cls_logits"].sigmoid() * det["centerness"].sigmoid()[..., None]).sqrt()  # (B, L, C)
        b, n_loc, n_cls = scores.shape
        k = min(head.pre_nms_topk, n_loc * n_cls)
        top_s, top_i = scores.reshape(b, n_loc * n_cls).topk(k, dim=1)  # (B, k)
        loc, lab = top_i // n_cls, top_i % n_cls
        boxes = decode_ltrb(det["points"][loc], torch.gather(det["box_ltrb"], 1, loc[..., None].expand(b, k, 4)))
        h, w = images.shape[-2:]
        boxes = torch.stack([boxes[..., 0].clamp(0, w), boxes[..., 1].clamp(0, h), boxes[..., 2].clamp(0, w),
                             boxes[..., 3].clamp(0, h)], dim=-1)
        batch_idx = torch.arange(b, device=images.device)[:, None].expand(b, k)
        flat_boxes, flat_scores = boxes.reshape(-1, 4), top_s.reshape(-1)
        groups = (batch_idx * n_cls + lab).reshape(-1)  # NMS within each image and class
        keep = batched_nms(flat_boxes, flat_scores, groups, head.iou_thr)
        keep = keep[flat_scores[keep] > head.score_thr]
        # at most max_det per image: keep is sorted by score, so a running count per image ranks them
        in_image = (batch_idx.reshape(-1)[keep][:, None] == torch.arange(b, device=images.device)[None]).long()
        rank = (in_image.cumsum(0) * in_image).sum(1)
        keep = keep[rank <= head.max_det]
        kb, kl = batch_idx.reshape(-1)[keep], loc.reshape(-1)[keep]
        outputs = {"det_batch_index": kb, "det_boxes": flat_boxes[keep], "det_scores": flat_scores[keep],
                   "det_labels": lab.reshape(-1)[keep]}
        if "inst" in out:
            proto, coefs = out["inst"]["proto"], out["inst"]["coefs"]
            hp, wp = proto.shape[-2:]
            outputs["det_masks"] = torch.einsum("nk,nkhw->nhw", coefs[kb, kl], proto[kb]).sigmoid()
        if "cls" in out:
            outputs["cls_probs"] = out["cls"]["logits"].softmax(-1)
        if "sem" in out:
            outputs["sem_labels"] = semantic_labels(out["sem"]["logits"], (h, w), self.net.heads["sem"].label_stride)
        return tuple(outputs[n] for n in self.names)
