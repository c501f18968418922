"""Learning test: the whole network overfits a handful of shapes images to near-perfect outputs.

Scored on the same images it trained on, on purpose: this checks that every head and loss can
learn, not how well the model generalises (that is the val split's job in training).
"""

import torch

from fourm21.data.coco import CocoDataset
from fourm21.data.collate import collate_samples
from fourm21.data.transforms import build_dense_transform
from fourm21.inference.decode import DecodeSettings, decode
from fourm21.losses.multitask import MultiTaskLoss
from fourm21.models.multitask import build_model
from fourm21.tasks import head_losses
from tests.conftest import evaluator, model_config


def overfit_and_score(model: torch.nn.Module, shapes_root, steps: int = 250) -> dict[str, float]:
    """Train ``model`` on 8 shapes images for ``steps`` AdamW steps (the loss must fall below a fifth) and
    score it on those same images. Shared with the lite model's test (tests/models/test_lite.py)."""
    ds = CocoDataset(shapes_root / "images", shapes_root / "annotations/instances_train.json",
                     build_dense_transform(64, train=False), semantic_dir=shapes_root / "semantic")
    batch = collate_samples([ds[i] for i in range(8)])
    criterion = MultiTaskLoss({"cls": 1.0, "det": 1.0, "inst": 1.0, "sem": 1.0})
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    first = None
    for _ in range(steps):
        total, _ = criterion(head_losses(model, model(batch["image"]), batch))
        opt.zero_grad()
        total.backward()
        opt.step()
        first = first if first is not None else total.item()
    assert total.item() < 0.2 * first
    model.eval()
    ev = evaluator(ds, net=model)
    ev.update(decode(model(batch["image"]), tuple(batch["image"].shape[-2:]), DecodeSettings.from_net(model)), batch)
    return ev.compute()


def test_network_overfits_a_handful_of_images(shapes_root):
    torch.manual_seed(0)
    m = overfit_and_score(build_model(model_config()), shapes_root)
    assert m["cls/acc"] == 1.0
    assert m["det/map50"] >= 0.9, m
    assert m["inst/map50"] >= 0.8, m
    assert m["sem/miou"] >= 0.8, m
