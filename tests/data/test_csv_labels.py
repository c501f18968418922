import pytest
import torch
from PIL import Image

from fourm21.data.csv_labels import AttributeDataset, MultiLabelCaptionDataset, read_csv_rows
from fourm21.data.transforms import build_classification_transform
from fourm21.errors import DatasetError
from tests.conftest import SHARED_DATA

COMP5329 = SHARED_DATA / "comp5329-labels-only" / "train.csv"


@pytest.fixture()
def images(tmp_path):
    for name in ("a.jpg", "b.jpg", "c.jpg"):
        Image.new("RGB", (20, 30), (10, 200, 30)).save(tmp_path / name)
    return tmp_path


def test_multilabel_csv_quotes_line_breaks_and_empty_labels(images):
    csv_path = images / "ml.csv"
    csv_path.write_bytes(b'ImageID,Labels,Caption\r\n'
                         b'a.jpg,1 19,"A man, a dog and a ""frisbee"""\r\n'
                         b'b.jpg,3,"two lines\rin one caption"\r\n'
                         b'c.jpg,,a test row without labels\r\n')
    ds = MultiLabelCaptionDataset(csv_path, images, class_ids=[1, 3, 19],
                                  transform=build_classification_transform(32, train=False))
    assert len(ds) == 3
    a, b, c = ds[0], ds[1], ds[2]
    assert a["caption"] == 'A man, a dog and a "frisbee"'
    assert a["labels"].tolist() == [1.0, 0.0, 1.0]
    assert "\r" in b["caption"] and b["labels"].tolist() == [0.0, 1.0, 0.0]
    assert "labels" not in c and c["caption_tokens"].ne(0).any()  # no labels: kept, trains nothing
    assert a["image"].shape == (3, 32, 32)


def test_multilabel_unknown_class_and_missing_column_name_the_line(images):
    bad = images / "bad.csv"
    bad.write_text("ImageID,Labels,Caption\na.jpg,1 12,x\n")
    with pytest.raises(DatasetError, match=r"bad.csv, line 2: unknown class id\(s\) \[12\]"):
        MultiLabelCaptionDataset(bad, images, class_ids=[1, 3])
    nocap = images / "nocap.csv"
    nocap.write_text("ImageID,Labels\na.jpg,1\n")
    with pytest.raises(DatasetError, match=r"nocap.csv: missing column\(s\) \['Caption'\]"):
        MultiLabelCaptionDataset(nocap, images, class_ids=[1])


def test_attributes_missing_values_and_train_class_lists(images):
    train = images / "attr_train.csv"
    train.write_text("image,colour,season\na.jpg,red,summer\nb.jpg,,winter\nc.jpg,blue,\n")
    val = images / "attr_val.csv"
    val.write_text("image,colour,season\na.jpg,green,winter\nb.jpg,blue,summer\n")
    ds = AttributeDataset(train, images, groups=["colour", "season"])
    assert ds.classes == {"colour": ["blue", "red"], "season": ["summer", "winter"]}
    assert ds[0]["attributes"] == {"colour": 1, "season": 0}
    assert ds[1]["attributes"]["colour"] == -1 and ds[2]["attributes"]["season"] == -1  # missing -> -1
    v = AttributeDataset(val, images, groups=["colour", "season"], classes_from=train)
    assert v.classes == ds.classes  # val indices follow the training CSV
    assert v[0]["attributes"] == {"colour": -1, "season": 1}  # unknown value 'green' -> missing
    assert v.unknown == {"colour": 1, "season": 0}
    with pytest.raises(DatasetError, match="missing column"):
        AttributeDataset(train, images, groups=["colour", "size"])


@pytest.mark.skipif(not COMP5329.is_file(), reason=f"COMP5329 label CSV not present at {COMP5329}")
def test_real_comp5329_csv_parses():
    rows = read_csv_rows(COMP5329, ["ImageID", "Labels", "Caption"])
    assert len(rows) == 24000  # the shared part (PROVENANCE.md): 6,000 rows are held out
    labels = [int(t) for r in rows for t in r["Labels"].split()]
    assert set(labels) == set(range(1, 20)) - {12}
    assert labels.count(1) == 18256 and labels.count(19) == 809  # the per-class counts PROVENANCE.md gives
    assert sum("\r" in r["Caption"] for r in rows) == 3  # bare CRs inside quoted captions survive parsing
    assert all(r["ImageID"].endswith(".jpg") for r in rows)


def test_tokenizer_is_stable_and_bounded():
    from fourm21.data.text import tokenize
    t = tokenize("A dog, a DOG!", num_buckets=50, max_tokens=8)
    assert t.shape == (8,) and t.max() < 50 and t[0] == t[2]  # 'a' twice -> the same id
    assert torch.equal(t, tokenize("a dog a dog", num_buckets=50, max_tokens=8))
    assert tokenize("", 50, 4).eq(0).all()


def test_multilabel_class_ids_read_from_the_training_csv(images):
    train = images / "ml_train.csv"
    train.write_text("ImageID,Labels,Caption\na.jpg,19 1,x\nb.jpg,3,y\nc.jpg,,z\n")
    val = images / "ml_val.csv"
    val.write_text("ImageID,Labels,Caption\na.jpg,3,x\nb.jpg,3 7,y\n")  # a subset of the ids, and one (7) never trained
    ds = MultiLabelCaptionDataset(train, images)  # class_ids left out
    assert ds.class_ids == [1, 3, 19] and ds.label_names == ["1", "3", "19"] and ds.unknown == {}
    assert ds[0]["labels"].tolist() == [1.0, 0.0, 1.0]
    v = MultiLabelCaptionDataset(val, images, class_ids_from=train)
    assert v.class_ids == ds.class_ids  # val indices follow the training CSV
    assert v[0]["labels"].tolist() == [0.0, 1.0, 0.0]
    assert v[1]["labels"].tolist() == [0.0, 1.0, 0.0] and v.unknown == {7: 1}  # 7 left out, counted
    with pytest.raises(DatasetError, match=r"ml_val.csv, line 3: unknown class id\(s\) \[7\]"):
        MultiLabelCaptionDataset(val, images, class_ids=[1, 3, 19])  # a list the config gives stays strict
    empty = images / "ml_empty.csv"
    empty.write_text("ImageID,Labels,Caption\na.jpg,,x\n")
    with pytest.raises(DatasetError, match=r"ml_empty.csv: column 'Labels' holds no class ids.*data.class_ids"):
        MultiLabelCaptionDataset(empty, images)


def test_attribute_groups_read_from_the_training_csv(images):
    train = images / "attr_train.csv"
    train.write_text("image,colour,season\na.jpg,red,summer\nb.jpg,blue,winter\n")
    val = images / "attr_val.csv"
    val.write_text("image,colour,notes\na.jpg,blue,x\nb.jpg,green,y\n")  # no 'season'; a column training lacks
    ds = AttributeDataset(train, images)  # groups left out: every column but the image's
    assert ds.groups == ["colour", "season"] and ds.missing_columns == []
    v = AttributeDataset(val, images, classes_from=train)
    assert v.groups == ds.groups and v.classes == ds.classes and v.missing_columns == ["season"]
    assert v[0]["attributes"] == {"colour": 0, "season": -1} and v[1]["attributes"] == {"colour": -1, "season": -1}
    assert v.unknown == {"colour": 1, "season": 0}
    assert AttributeDataset(train, images, classes={"season": ["winter"]}).groups == ["season"]
    only = images / "attr_only_image.csv"
    only.write_text("image\na.jpg\n")
    with pytest.raises(DatasetError, match="no attribute columns besides 'image'"):
        AttributeDataset(only, images)


def _train_in_process(tmp_path, shapes_root, experiment: str, kind: str, val_csv, extra=()):
    """fourm21-train experiment=<experiment> on the shapes CSVs, in this process (one epoch, tiny net)."""
    from hydra import compose, initialize_config_dir

    from fourm21.engine.common import CONFIG_DIR
    from fourm21.engine.train import run_train
    overrides = [f"experiment={experiment}", f"data.csv={shapes_root / f'{kind}_train.csv'}",
                 f"data.val_csv={val_csv}", f"data.image_dir={shapes_root / 'images'}", "data.datamodule.prepare=null",
                 "data.datamodule.batch_size=8", "trainer.max_epochs=1", "evaluate=false", "logger=csv",
                 "+model.backbone.dims=[16,32,48,64]", "+model.backbone.depths=[1,1,1,1]", "model.neck.channels=32",
                 "trainer.enable_model_summary=false",
                 f"paths.run_dir={tmp_path / 'run'}", *extra]
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose(config_name="train", overrides=overrides)
    assert cfg.data.get("groups", "absent") is None or cfg.data.get("class_ids", "absent") is None  # left out
    metrics = run_train(cfg)
    ckpt = torch.load(tmp_path / "run/checkpoints/last.ckpt", map_location="cpu", weights_only=False)
    from omegaconf import OmegaConf
    return metrics, ckpt["hyper_parameters"], OmegaConf.load(tmp_path / "run/config.yaml")


def test_training_without_class_ids_reads_them_and_the_checkpoint_keeps_them(tmp_path, shapes_root):
    import csv
    rows = list(csv.DictReader((shapes_root / "multilabel_val.csv").open()))
    train_ids = sorted({int(t) for r in csv.DictReader((shapes_root / "multilabel_train.csv").open())
                        for t in r["Labels"].split()})
    val = tmp_path / "multilabel_val_subset.csv"  # held back with fewer ids than training: 5 and 6 never occur
    with val.open("w", newline="") as f:
        w = csv.DictWriter(f, ["ImageID", "Labels", "Caption"])
        w.writeheader()
        for r in rows:
            w.writerow(dict(r, Labels=" ".join(t for t in r["Labels"].split() if int(t) < 5)))
    metrics, hp, cfg = _train_in_process(tmp_path, shapes_root, "multilabel_captions", "multilabel", val)
    assert "val/mlc/map" in metrics
    assert hp["meta"]["label_names"] == [str(i) for i in train_ids] and len(train_ids) == 5
    assert hp["model"]["heads"]["mlc"]["num_classes"] == len(train_ids)
    assert list(cfg.data.class_ids) == train_ids and cfg.data.num_labels == len(train_ids)  # config.yaml records them


def test_training_without_attribute_groups_reads_them_and_the_checkpoint_keeps_them(tmp_path, shapes_root):
    import csv
    val = tmp_path / "attributes_val_fewer_columns.csv"  # held back without the 'count' column, with one more
    with val.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["image", "scene", "main_shape", "annotator"])
        for r in csv.DictReader((shapes_root / "attributes_val.csv").open()):
            w.writerow([r["image"], r["scene"], r["main_shape"], "someone"])
    metrics, hp, cfg = _train_in_process(tmp_path, shapes_root, "attributes", "attributes", val)
    train = AttributeDataset(shapes_root / "attributes_train.csv", shapes_root / "images")
    assert train.groups == ["scene", "main_shape", "count"]
    assert hp["meta"]["attribute_classes"] == train.classes
    assert hp["model"]["heads"]["attr"]["groups"] == {g: len(c) for g, c in train.classes.items()}
    assert list(cfg.data.groups) == train.groups
    assert "val/attr.scene/acc" in metrics and "val/attr.count/acc" not in metrics  # no val labels for count
