import torch

from fourm21.data.collate import collate_samples
from fourm21.data.sample import IGNORE_INDEX


def test_pads_instances_and_records_task_masks():
    a = {"image": torch.zeros(3, 8, 8), "label": 2, "boxes": torch.tensor([[0.0, 0, 4, 4], [1, 1, 5, 5]]),
         "box_labels": torch.tensor([0, 1]), "masks": torch.ones(2, 8, 8, dtype=torch.bool),
         "semantic": torch.zeros(8, 8, dtype=torch.long), "meta": {"image_id": 1}}
    b = {"image": torch.ones(3, 8, 8), "label": 1, "meta": {"image_id": 2}}  # classification-only sample
    batch = collate_samples([a, b])
    assert batch["image"].shape == (2, 3, 8, 8)
    assert batch["gt_boxes"].shape == (2, 2, 4) and batch["gt_masks"].shape == (2, 2, 8, 8)
    assert batch["gt_labels"].tolist() == [[0, 1], [-1, -1]]
    assert batch["has_boxes"].tolist() == [True, False] and batch["has_label"].tolist() == [True, True]
    assert batch["has_semantic"].tolist() == [True, False]
    assert (batch["semantic"][1] == IGNORE_INDEX).all()
    assert batch["label"].tolist() == [2, 1]
    c = {"image": torch.zeros(3, 8, 8), "meta": {}}
    assert collate_samples([c])["label"].tolist() == [-1]
