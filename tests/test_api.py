"""fourm21.load on a checkpoint and on an exported directory; predict on paths, arrays and PIL images."""

import numpy as np
import pytest
import torch
from PIL import Image

import fourm21
from fourm21.errors import CheckpointError
from fourm21.export.formats import export_safetensors


def test_load_checkpoint_and_predict_in_original_pixels(tiny_run, tmp_path):
    _, run_dir, _ = tiny_run
    model = fourm21.load(run_dir / "checkpoints/best.ckpt")
    assert model.img_size == 64
    assert model.class_names == ["circle", "square", "triangle"]
    assert model.image_class_names == ["forest", "desert", "ocean", "dusk"]
    rgb = (np.random.default_rng(0).random((48, 80, 3)) * 255).astype(np.uint8)
    Image.fromarray(rgb).save(tmp_path / "a.png")
    preds = model.predict([tmp_path / "a.png", rgb, Image.fromarray(rgb).convert("L")])
    assert len(preds) == 3
    assert all(len(p["boxes"]) for p in preds)  # the shapes below are checked on real detections
    for p in preds:
        n = len(p["boxes"])
        assert p["masks"].shape == (n, 48, 80) and p["semantic"].shape == (48, 80)
        assert (p["boxes"][:, 2] <= 80).all() and (p["boxes"][:, 3] <= 48).all()
        assert p["class_probs"].shape == (4,)
    torch.testing.assert_close(preds[0]["class_probs"], preds[1]["class_probs"])  # same pixels, same answer


def test_network_input_is_channels_last_on_cpu_with_the_same_outputs(tiny_run):
    _, run_dir, _ = tiny_run
    model = fourm21.load(run_dir / "checkpoints/best.ckpt")
    x = torch.randn(2, 3, 64, 64)
    xin = model.network_input(x)
    assert xin.is_contiguous(memory_format=torch.channels_last) and torch.equal(xin, x)
    with torch.no_grad():
        plain, fast = model.net(x), model.net(xin)
    for task, raw in plain.items():
        for key, value in raw.items():
            torch.testing.assert_close(fast[task][key], value, atol=1e-4, rtol=1e-4)


def test_sem_label_stride_decodes_the_semantic_map_in_blocks(tiny_run):
    _, run_dir, _ = tiny_run
    model = fourm21.load(run_dir / "checkpoints/best.ckpt")
    rgb = (np.random.default_rng(1).random((64, 64, 3)) * 255).astype(np.uint8)
    exact = model.predict([rgb])[0]["semantic"]
    model.set_thresholds(sem_label_stride=4)
    coarse = model.predict([rgb])[0]["semantic"]
    assert coarse.shape == exact.shape == (64, 64)
    blocks = coarse.reshape(16, 4, 16, 4)
    assert (blocks == blocks[:, :1, :, :1]).all()  # constant over each 4 x 4 cell
    assert (coarse == exact).float().mean() > 0.5
    with pytest.raises(fourm21.errors.ConfigError, match="sem_label_stride"):
        model.set_thresholds(sem_label_stride=0)


def test_safetensors_round_trip_is_exact(tiny_run, tmp_path):
    _, run_dir, _ = tiny_run
    model = fourm21.load(run_dir / "checkpoints/best.ckpt")
    export_safetensors(model, tmp_path / "exported")
    again = fourm21.load(tmp_path / "exported")
    assert again.class_names == model.class_names and again.img_size == model.img_size
    x = torch.randn(2, 3, 64, 64)
    a, b = model.net(x), again.net(x)
    for task in a:
        for key in a[task]:
            assert torch.equal(a[task][key], b[task][key]), (task, key)


def test_bad_checkpoints_are_named(tmp_path, tiny_run):
    with pytest.raises(CheckpointError, match="not found"):
        fourm21.load(tmp_path / "nope.ckpt")
    cut = tmp_path / "cut.ckpt"
    _, run_dir, _ = tiny_run
    cut.write_bytes((run_dir / "checkpoints/best.ckpt").read_bytes()[:5000])
    with pytest.raises(CheckpointError, match="cut.ckpt"):
        fourm21.load(cut)
    other = tmp_path / "other.ckpt"
    torch.save({"state_dict": {}, "hyper_parameters": {}}, other)
    with pytest.raises(CheckpointError, match="not a fourm21"):
        fourm21.load(other)
    (tmp_path / "dir").mkdir()
    with pytest.raises(CheckpointError, match="lacks config.yaml"):
        fourm21.load(tmp_path / "dir")
