"""Scale-out on Lightning's DDP: 2 CPU processes (gloo) train the same weights as 1 process with the same
global batch, and the val metrics are computed on everything the processes saw together."""

from __future__ import annotations

import json
import os
import socket
from datetime import timedelta
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.utils.data import DistributedSampler

from fourm21.data.coco import CocoDataset
from fourm21.data.collate import collate_samples
from fourm21.data.datamodule import MultiTaskDataModule, RankBatchSampler
from fourm21.data.mixed import RatioBatchSampler
from fourm21.data.transforms import build_dense_transform
from fourm21.metrics.coco import results_for
from fourm21.metrics.evaluator import MultiTaskEvaluator
from tests.conftest import evaluator, run_cli

TASKS = ["cls", "det", "inst", "sem"]
NUM_IMAGES = 11  # odd: the two processes get 6 and 5 images


def _dataset(root: Path) -> CocoDataset:
    return CocoDataset(root / "images", root / "annotations/instances_val.json",
                       build_dense_transform(64, train=False), semantic_dir=root / "semantic")


def _evaluator(ds: CocoDataset, tasks: list[str] = TASKS) -> MultiTaskEvaluator:
    return evaluator(ds, *tasks)


def _preds(batch: dict) -> list[dict]:
    """Imperfect predictions that depend on the image only (not on the batch or the process)."""
    preds = []
    for i, meta in enumerate(batch["meta"]):
        g = torch.Generator().manual_seed(int(meta["image_id"]))
        valid = batch["gt_labels"][i] >= 0
        boxes = batch["gt_boxes"][i][valid]
        masks = batch["gt_masks"][i][valid]
        label = (batch["label"][i] + int(meta["image_id"] % 3 == 0)) % 4  # every third image misclassified
        preds.append({
            "boxes": boxes + torch.randn(boxes.shape, generator=g) * 3, "labels": batch["gt_labels"][i][valid],
            "scores": torch.rand(len(boxes), generator=g),
            "masks": torch.roll(masks, 2, dims=2),
            "class_label": label, "class_probs": torch.nn.functional.one_hot(label, 4).float(),
            "semantic": torch.roll(batch["semantic"][i].clamp(max=3), 3, dims=1),
        })
    return preds


def _score(ev: MultiTaskEvaluator, ds: CocoDataset, indices: list[int], batch_size: int = 2) -> None:
    for start in range(0, len(indices), batch_size):
        batch = collate_samples([ds[i] for i in indices[start:start + batch_size]])
        ev.update(_preds(batch), batch)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# What each of the two processes scores besides its half: "all" every task, "padded" boxes and masks
# with image 0 a second time on the last process, as a padding DistributedSampler would do.
CASES = {"all": (TASKS, []), "padded": (["det", "inst"], [0])}


def _worker(rank: int, world: int, port: int, root: str, out: str) -> None:
    """One process of the gathered evaluation: scores its shard of the val images for every case."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world, timeout=timedelta(seconds=120))
    try:
        ds = _dataset(Path(root))
        report = {}
        for case, (tasks, extra) in CASES.items():
            ev = _evaluator(ds, tasks)
            _score(ev, ds, list(range(rank, NUM_IMAGES, world)) + (extra if rank == world - 1 else []))
            metrics = ev.compute()
            if rank == 0:  # after compute, tables, plots and files are local work: no other process takes part
                matrix = ev.confusion_matrices().get("cls")
                ev.write_predictions(Path(out) / case)
                metrics["confusion_total"] = float(matrix.sum()) if matrix is not None else 0.0
                metrics["num_results"] = float(len(ev.results))
            report[case] = metrics
        Path(out, f"rank{rank}.json").write_text(json.dumps(report))
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def gathered(shapes_root, tmp_path_factory) -> tuple[Path, list[dict]]:
    """Two gloo processes (torch.multiprocessing), each scoring half of the val images; their reports."""
    out = tmp_path_factory.mktemp("ddp_eval")
    mp.spawn(_worker, args=(2, _free_port(), str(shapes_root), str(out)), nprocs=2, join=True)
    return out, [json.loads((out / f"rank{r}.json").read_text()) for r in range(2)]


def test_metrics_are_computed_on_all_processes_predictions(shapes_root, gathered):
    """Both processes report what one process reports on the whole set; COCO mAP is not a mean of per-rank mAPs."""
    out, ranks = gathered
    ds = _dataset(shapes_root)
    single = _evaluator(ds)
    _score(single, ds, list(range(NUM_IMAGES)))
    ref = single.compute()
    for report in ranks:
        for key, value in ref.items():
            assert report["all"][key] == pytest.approx(value, abs=1e-9), key
    assert ranks[0]["all"]["confusion_total"] == NUM_IMAGES
    assert ranks[0]["all"]["num_results"] == len(single.results)
    written = json.loads((out / "all" / "bbox.json").read_text())
    assert written == json.loads(json.dumps(results_for(sorted(single.results, key=lambda r: r["image_id"]), "bbox")))
    shard_maps = []
    for rank in range(2):
        shard = _evaluator(ds)
        _score(shard, ds, list(range(rank, NUM_IMAGES, 2)))
        shard_maps.append(shard.compute()["det/map"])
    assert abs(sum(shard_maps) / 2 - ref["det/map"]) > 1e-3  # the check above tells the two apart


def test_coco_results_of_an_image_seen_twice_count_once(shapes_root, gathered):
    """Image 0 scored a second time by the other process, as a padding DistributedSampler does, counts once."""
    ds = _dataset(shapes_root)
    single = _evaluator(ds, ["det", "inst"])
    _score(single, ds, list(range(NUM_IMAGES)))
    ref = single.compute()
    for report in gathered[1]:
        assert {k: report["padded"][k] for k in ref} == pytest.approx(ref, abs=1e-9)
    assert gathered[1][0]["padded"]["num_results"] == len(single.results)


@pytest.mark.parametrize("option, strategy", [("ddp", "DDPStrategy"), ("ddp_cpu", "DDPStrategy"),
                                              ("fsdp", "FSDPStrategy")])
def test_trainer_configs_build_lightning_strategies(option, strategy):
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate

    from fourm21.engine.common import CONFIG_DIR
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose(config_name="train", overrides=[f"trainer={option}"])
    built = instantiate(cfg.trainer.strategy)
    assert type(built).__name__ == strategy
    assert cfg.trainer.num_nodes == 1 and cfg.trainer.devices == (2 if option == "ddp_cpu" else -1)
    if option == "ddp_cpu":
        assert built._process_group_backend == "gloo" and cfg.trainer.accelerator == "cpu"


class _FakeTrainer:
    def __init__(self, rank: int, world: int) -> None:
        self.distributed_sampler_kwargs = {"num_replicas": world, "rank": rank} if world > 1 else None


def test_datamodule_shards_val_once_train_in_order_and_unlabelled_per_process():
    data = list(range(9))
    dm = MultiTaskDataModule(train=lambda: data, val=lambda: data, batch_size=2, shuffle=False)
    dm.setup("fit")
    assert list(dm.train_dataloader().sampler) == data  # file order
    seen, train = [], []
    for rank in range(2):
        dm.trainer = _FakeTrainer(rank, 2)
        seen += list(dm.val_dataloader().sampler)
        train.append(list(dm.train_dataloader().sampler))
    assert sorted(seen) == data  # 5 + 4: no padding, no image twice
    assert train == [[0, 2, 4, 6, 8], [1, 3, 5, 7, 0]]  # file order, interleaved (Lightning's would shuffle)
    dm.attach_unlabelled(list(range(5)), batch_size=3)  # semi-supervised: as many unlabelled steps as labelled
    loaders = dm.train_dataloader().iterables
    assert len(loaders["sup"]) == len(loaders["unsup"]) == 2


def test_rank_batch_sampler_shares_out_a_mixed_batch_order():
    def ratio() -> RatioBatchSampler:
        return RatioBatchSampler([20, 20], [1.0, 1.0], [2, 4], num_batches=9, seed=0)
    every = list(RankBatchSampler(range(40), ratio()))
    shards = [list(RankBatchSampler(DistributedSampler(range(40), num_replicas=2, rank=r), ratio())) for r in range(2)]
    assert len(every) == 9 and [len(s) for s in shards] == [4, 4]  # same step count on both processes
    assert shards[0] == every[0:8:2] and shards[1] == every[1:8:2]


# One tiny classification-only run, so the loss is a plain mean over the images of the global batch;
# no augmentation and file order, so both runs see the same images in the same steps. Validation runs
# once, at the end, so best.ckpt holds the final weights.
EQUIVALENCE = ["data.generate.num_train=16", "data.generate.num_val=9", "+data.datamodule.val_batch_size=4",
               "+model.backbone.dims=[16,32,48,64]", "+model.backbone.depths=[1,1,1,1]", "model.neck.channels=32",
               "model.heads.det.enabled=false", "model.heads.inst.enabled=false", "model.heads.sem.enabled=false",
               "data.aug.hflip=0", "data.aug.affine_p=0", "data.aug.color_jitter=0", "data.datamodule.shuffle=false",
               "trainer.max_epochs=2", "trainer.check_val_every_n_epoch=2", "trainer.enable_model_summary=false",
               "callbacks.progress=null", "evaluate=false", "plots=false", "trainer.precision=32-true"]


def _last_val(run_dir: Path, key: str) -> float:
    import csv
    rows = [r for r in csv.DictReader((run_dir / "logs" / "metrics.csv").open()) if r.get(key)]
    return float(rows[-1][key])


def test_two_processes_train_the_weights_of_one_with_the_same_global_batch(tmp_path):
    """trainer=ddp_cpu, 2 x batch 4 == trainer=cpu, 1 x batch 8: same weights after 4 steps (within 1e-5)."""
    common = [*EQUIVALENCE, f"paths.data_dir={tmp_path / 'data'}"]
    one = run_cli("fourm21-train", [*common, "data.datamodule.batch_size=8", f"hydra.run.dir={tmp_path / 'one'}"],
                  tmp_path)
    assert one.returncode == 0, one.stderr[-3000:]
    two = run_cli("fourm21-train", [*common, "trainer=ddp_cpu", "data.datamodule.batch_size=4",
                                    f"hydra.run.dir={tmp_path / 'two'}"], tmp_path)
    assert two.returncode == 0, two.stderr[-3000:]
    a = torch.load(tmp_path / "one" / "checkpoints" / "best.ckpt", map_location="cpu", weights_only=False)
    b = torch.load(tmp_path / "two" / "checkpoints" / "best.ckpt", map_location="cpu", weights_only=False)
    assert a["global_step"] == b["global_step"] == 4
    assert a["state_dict"].keys() == b["state_dict"].keys()
    diff = max(float((a["state_dict"][k].float() - b["state_dict"][k].float()).abs().max()) for k in a["state_dict"])
    print(f"max |weight difference|, 1 process vs 2: {diff:.2e}")
    assert diff < 1e-5
    # and both trained: the same run stopped after its first epoch (2 steps) holds other weights
    half = run_cli("fourm21-train", [*common, "data.datamodule.batch_size=8", "trainer.max_epochs=1",
                                     "trainer.check_val_every_n_epoch=1", f"hydra.run.dir={tmp_path / 'half'}"],
                   tmp_path)
    assert half.returncode == 0, half.stderr[-3000:]
    c = torch.load(tmp_path / "half" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert c["global_step"] == 2
    moved = max(float((a["state_dict"][k].float() - c["state_dict"][k].float()).abs().max())
                for k in a["state_dict"] if k.startswith("model."))
    assert moved > 1e-3, f"two more optimiser steps moved the weights by only {moved}"
    # 9 val images: 5 and 4 per process (no padding); the accuracy is the whole set's, as in one process
    assert _last_val(tmp_path / "two", "val/cls/acc") == pytest.approx(_last_val(tmp_path / "one", "val/cls/acc"))
    # the second process ran in the same Hydra run dir: one report, no second run folder
    assert (tmp_path / "two" / "report.json").is_file() and not (tmp_path / "runs").exists()


def test_eval_under_ddp_reports_the_metrics_of_one_process(tiny_run, tmp_path):
    """fourm21-eval trainer=ddp_cpu: every head's metrics (COCO AP included) equal those of one process."""
    work, run_dir, _ = tiny_run
    args = [f"ckpt_path={run_dir / 'checkpoints' / 'best.ckpt'}", f"paths.data_dir={work / 'data'}",
            "data.generate.num_train=16", "data.generate.num_val=8", "+data.datamodule.val_batch_size=3", "plots=false",
            "trainer.precision=32-true"]  # both in fp32: ddp_cpu is, and auto may pick bf16 on this CPU
    reports = []
    for name, extra in (("one", []), ("two", ["trainer=ddp_cpu"])):
        res = run_cli("fourm21-eval", [*args, *extra, f"hydra.run.dir={tmp_path / name}"], tmp_path)
        assert res.returncode == 0, res.stderr[-3000:]
        reports.append(json.loads((tmp_path / name / "report.json").read_text()))
    # losses are per-batch means of rank 0's batches until they are logged with sync_dist; times differ
    keys = [k for k in reports[0] if k.startswith("val/") and "loss" not in k]
    assert {"val/det/map", "val/inst/map", "val/sem/miou", "val/cls/acc", "val/det/confusion"} <= set(keys)
    numbers = [k for k in keys if isinstance(reports[0][k], float | int)]
    assert {k: reports[1][k] for k in numbers} == pytest.approx({k: reports[0][k] for k in numbers}, abs=1e-6)
    for k in set(keys) - set(numbers):  # the error analysis: confusion matrices, worst images
        assert reports[1][k] == reports[0][k], k
