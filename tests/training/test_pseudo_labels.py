import csv

import torch

from fourm21.data.sample import IGNORE_INDEX
from fourm21.inference.decode import DecodeSettings
from fourm21.training.evaluation import load_module
from fourm21.training.pseudo_labels import photometric_jitter, pseudo_targets
from tests.conftest import TINY, model_config, run_cli, run_cli_here


def _unlabelled_batch(b: int = 2, size: int = 8) -> dict:
    return {"image": torch.zeros(b, 3, size, size), "has_label": torch.zeros(b, dtype=torch.bool)}


def test_pseudo_targets_keep_only_confident_predictions():
    b, size = 2, 8
    sem_logits = torch.zeros(b, 3, size, size)
    sem_logits[0, 1, :4] = 10.0  # image 0: top half confidently class 1, the rest uncertain
    outputs = {"cls": {}, "det": {}, "inst": {}, "sem": {"logits": sem_logits},
               "attr": {"colour": torch.tensor([[5.0, 0.0], [0.1, 0.0]])},
               "mlc": {"logits": torch.tensor([[6.0, -6.0], [6.0, 0.0]])}}
    box = torch.tensor([[1.0, 1.0, 5.0, 5.0], [2.0, 2.0, 6.0, 6.0]])
    mask = torch.zeros(2, size, size, dtype=torch.bool)
    mask[0, 1:5, 1:5] = True
    preds = [{"class_probs": torch.tensor([0.95, 0.05]), "boxes": box, "scores": torch.tensor([0.9, 0.3]),
              "labels": torch.tensor([2, 0]), "masks": mask},
             {"class_probs": torch.tensor([0.6, 0.4]), "boxes": box[:0], "scores": torch.zeros(0),
              "labels": torch.zeros(0, dtype=torch.long), "masks": mask[:0]}]
    thr = {"cls": 0.9, "det": 0.5, "sem": 0.8, "attr": 0.9, "mlc": 0.9}
    settings = DecodeSettings.from_config(model_config(**{
        "heads.attr.enabled": True, "heads.attr.groups": {"colour": 2}, "heads.mlc.enabled": True,
        "heads.mlc.num_classes": 2}))
    out = pseudo_targets(outputs, preds, _unlabelled_batch(b, size), thr, settings)

    assert out["has_label"].tolist() == [True, False] and out["label"].tolist() == [0, -1]
    assert out["gt_boxes"].shape == (2, 1, 4) and out["gt_labels"].tolist() == [[2], [-1]]
    assert torch.equal(out["gt_boxes"][0, 0], box[0]) and torch.equal(out["gt_masks"][0, 0], mask[0])
    assert out["has_boxes"].all() and out["has_masks"].all()  # no confident box = background, not unknown
    assert (out["semantic"][0, :4] == 1).all() and (out["semantic"][0, 4:] == IGNORE_INDEX).all()
    assert (out["semantic"][1] == IGNORE_INDEX).all()
    assert out["attributes"]["colour"].tolist() == [0, -1]
    assert out["has_labels"].tolist() == [True, False] and out["labels"][0].tolist() == [1.0, 0.0]
    assert out["pseudo_stats"]["pseudo/boxes_per_image"] == 0.5
    assert out["pseudo_stats"]["pseudo/cls_frac"] == 0.5


def test_photometric_jitter_is_pixel_aligned_and_random():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(4, 3, 16, 16, generator=g)
    assert photometric_jitter(x, 0.0) is x
    y = photometric_jitter(x, 0.4, generator=g)
    assert y.shape == x.shape and not torch.allclose(x, y)
    # an edge stays where it was: jitter changes values, not positions
    x = torch.zeros(1, 3, 16, 16)
    x[..., 8:] = 1.0
    y = photometric_jitter(x, 0.4, generator=g)
    left, right = y[..., :8].mean(), y[..., 8:].mean()
    assert right - left > 0.5


def test_semi_supervised_run_trains_on_pseudo_labels_and_reloads(tmp_path):
    run_dir = tmp_path / "run"
    data = tmp_path / "data"
    res = run_cli("fourm21-train", [*TINY, f"paths.data_dir={data}", f"hydra.run.dir={run_dir}",
                                    "semi.enabled=true", "semi.start_step=0", "semi.batch_size=8",
                                    "semi.thresholds.det=0.0", "trainer.max_epochs=2", "plots=false"], tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    rows = list(csv.DictReader((run_dir / "logs" / "metrics.csv").open()))
    pseudo = [r for r in rows if r.get("train/pseudo/loss")]
    assert len(pseudo) == 2  # one per epoch
    assert all(float(r["train/pseudo/det/loss"]) > 0 for r in pseudo)
    assert float(pseudo[-1]["train/pseudo/boxes_per_image"]) > 0
    module = load_module(run_dir / "checkpoints" / "last.ckpt")
    assert module.mean_teacher is not None and int(module.mean_teacher.n_averaged) == 4  # 2 epochs x 2 steps
    student = dict(module.model.named_parameters())
    differs = [n for n, p in module.mean_teacher.module.named_parameters() if not torch.allclose(p, student[n])]
    assert differs, "the EMA teacher should lag behind the student"


def test_missing_unlabelled_folder_is_named(tmp_path):
    res = run_cli_here("fourm21-train", [*TINY, f"paths.data_dir={tmp_path / 'data'}", "semi.enabled=true",
                                    f"semi.unlabelled_root={tmp_path / 'nowhere'}", f"hydra.run.dir={tmp_path / 'r'}"],
                  tmp_path)
    assert res.returncode == 2
    assert "nowhere" in res.stderr and "Traceback" not in res.stderr


def test_unknown_teacher_is_a_config_error(tmp_path):
    res = run_cli_here("fourm21-train", [*TINY, f"paths.data_dir={tmp_path / 'data'}", "semi.enabled=true",
                                    "semi.teacher=mean", f"hydra.run.dir={tmp_path / 'r'}"], tmp_path)
    assert res.returncode == 2 and "semi.teacher" in res.stderr
