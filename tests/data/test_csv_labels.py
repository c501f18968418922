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
