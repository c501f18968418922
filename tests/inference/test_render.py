"""fourm21.inference.render: the one drawing of predictions (overlays, video frames, report grids), and plotting
that leaves the user's matplotlib backend alone."""

import subprocess
import sys
from types import SimpleNamespace

import cv2
import numpy as np
import torch

from fourm21.inference.render import (
    GRID_CELL,
    PALETTE,
    TITLE_H,
    draw_frame,
    image_to_uint8,
    plot_prediction_grid,
    plot_worst_images,
    save_overlay,
)
from tests.conftest import REPO

GREY = 128
CLASS_NAMES = ["circle", "square"]
IMAGE_CLASS_NAMES = ["day", "night"]


def _prediction(h: int, w: int) -> dict[str, torch.Tensor]:
    """A kept detection (box + mask), one under the score threshold, a semantic blob and the image classes."""
    masks = torch.zeros(2, h, w, dtype=torch.bool)
    masks[0, 160:240, 110:190] = True
    masks[1, 280:320, 20:60] = True
    semantic = torch.zeros(h, w, dtype=torch.long)
    semantic[300:360, 300:360] = 2
    return {"boxes": torch.tensor([[100.0, 150.0, 200.0, 250.0], [20.0, 280.0, 60.0, 320.0]]),
            "labels": torch.tensor([1, 0]), "scores": torch.tensor([0.9, 0.1]), "masks": masks,
            "semantic": semantic, "class_topk": torch.tensor([1, 0]), "class_topk_probs": torch.tensor([0.7, 0.3])}


def _changed(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.abs(a.astype(int) - b.astype(int)).sum(-1) > 0


def test_draw_frame_draws_inside_the_box_mask_and_semantic_map_only():
    image = np.full((400, 400, 3), GREY, dtype=np.uint8)
    pred = _prediction(400, 400)
    out = draw_frame(image, pred, CLASS_NAMES, IMAGE_CLASS_NAMES, score_thr=0.3, semantic=True)
    assert out.shape == image.shape and out.dtype == np.uint8
    changed = _changed(out, image)
    # the mask is tinted with its class colour: 0.45 grey + 0.55 colour
    tint = (0.45 * GREY + 0.55 * PALETTE[1] * 255).round()
    assert np.abs(out[200, 150].astype(float) - tint).max() <= 1
    assert changed[150, 120:180].all() and changed[250, 120:180].all()  # the box's top and bottom edges
    assert changed[310:350, 310:350].all()  # the semantic map
    assert changed[:16, 2:60].any()  # the top image classes, top left
    assert changed[130:150, 100:160].any()  # the box label above the box
    # nothing far from them: below the box, and the detection under score_thr
    assert not changed[260:290, 0:290].any() and not changed[40:130, 250:400].any()
    assert not changed[280:321, 20:61].any()
    without = draw_frame(image, pred, CLASS_NAMES, IMAGE_CLASS_NAMES, score_thr=0.3, semantic=False)
    assert not _changed(without, image)[310:350, 310:350].any()


def test_ground_truth_labels_leave_out_the_score():
    image = np.full((400, 400, 3), GREY, dtype=np.uint8)
    pred = {k: v[:1] for k, v in _prediction(400, 400).items() if k in ("boxes", "labels", "scores", "masks")}
    with_score = draw_frame(image, pred, CLASS_NAMES, [])
    without = draw_frame(image, pred, CLASS_NAMES, [], show_scores=False)
    label_row = slice(130, 150)  # "square 0.90" is wider than "square"
    assert _changed(with_score, image)[label_row].sum() > _changed(without, image)[label_row].sum() > 0


def test_save_overlay_writes_the_drawing_as_a_png_of_the_image_size(tmp_path):
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (400, 420, 3), dtype=np.uint8)
    pred = _prediction(400, 420)
    out = save_overlay(image, pred, CLASS_NAMES, IMAGE_CLASS_NAMES, tmp_path / "o.png", 0.3, True,
                       caption_lines=["attr: red"])
    written = cv2.imread(str(out), cv2.IMREAD_COLOR)
    assert written is not None and written.shape == (400, 420, 3)
    drawn = draw_frame(image, pred, CLASS_NAMES, IMAGE_CLASS_NAMES, 0.3, True, ["attr: red"])
    np.testing.assert_array_equal(cv2.cvtColor(written, cv2.COLOR_BGR2RGB), drawn)  # RGB in, RGB on disk
    small = save_overlay(image[:64, :48], {}, CLASS_NAMES, [], tmp_path / "small.png")
    assert cv2.imread(str(small)).shape[:2] == (320, 240)  # enlarged so that its labels stay readable


def test_image_to_uint8_takes_the_networks_input_pixels():
    pixels = torch.randint(0, 256, (3, 5, 7), dtype=torch.uint8)
    expected = pixels.permute(1, 2, 0).numpy()
    np.testing.assert_array_equal(image_to_uint8(pixels.float()), expected)  # float pixels 0-255 (INPUT_CONTRACT)
    np.testing.assert_array_equal(image_to_uint8(pixels), expected)
    assert image_to_uint8(torch.full((3, 2, 2), 300.0)).max() == 255  # clipped, not wrapped


def test_prediction_grid_draws_each_panel_with_draw_frame(tmp_path):
    images = torch.full((5, 3, 480, 640), 100, dtype=torch.uint8)  # larger than a panel: shrunk to it
    masks = torch.zeros(1, 480, 640, dtype=torch.bool)
    masks[0, 240:480, 320:640] = True  # the bottom-right quarter
    pred = {"boxes": torch.tensor([[320.0, 240.0, 639.0, 479.0]]), "labels": torch.tensor([0]),
            "scores": torch.tensor([0.9]), "masks": masks, "class_label": torch.tensor(1),
            "class_probs": torch.tensor([0.2, 0.8])}
    out = plot_prediction_grid(images, [pred] * 5, CLASS_NAMES, IMAGE_CLASS_NAMES, tmp_path / "grid.png")
    sheet = cv2.cvtColor(cv2.imread(str(out)), cv2.COLOR_BGR2RGB)
    cell = 6 + GRID_CELL
    assert sheet.shape == (2 * (cell + TITLE_H) + 6, 4 * cell + 6, 3)  # 4 columns, 2 rows
    y, x = 6 + TITLE_H, 6  # the first panel: 320 x 240
    tint = (0.45 * 100 + 0.55 * PALETTE[0] * 255).round()
    assert np.abs(sheet[y + 200, x + 240].astype(float) - tint).max() <= 1  # in the mask
    assert (sheet[y + 60, x + 80] == 100).all()  # outside it
    assert (sheet[6:y, x + 200:x + GRID_CELL] == 255).all() and (sheet[6:y, x:x + 60] < 128).any()  # the title


def test_worst_images_outline_missed_objects_dashed_red(tmp_path):
    image = np.full((100, 100, 3), GREY, dtype=np.uint8)
    errs = SimpleNamespace(image_id=3, missed=[([10.0, 10.0, 50.0, 50.0], 1)], false=[], confused=[])
    out = plot_worst_images([(image, {}, errs)], CLASS_NAMES, tmp_path / "worst.png")
    sheet = cv2.cvtColor(cv2.imread(str(out)), cv2.COLOR_BGR2RGB)
    y, x = 6 + TITLE_H, 6
    left_edge = sheet[y + 40:y + 150, x + 32]  # the box's left side, 3.2x enlarged to the panel
    red = (left_edge[:, 0] > 200) & (left_edge[:, 1] < 60) & (left_edge[:, 2] < 60)
    assert 0.3 < red.mean() < 0.9  # dashes: red, and gaps between them
    assert (sheet[y + 200:y + 300, x + 200:x + 300] == GREY).all()  # away from the outline, the image


def test_plotting_keeps_the_users_matplotlib_backend(tmp_path):
    code = f"""
import sys
import matplotlib
matplotlib.use("svg")
import fourm21.engine.predict, fourm21.serve.app, fourm21.metrics.plots
import torch
from fourm21.metrics.plots import plot_confusion_matrix
plot_confusion_matrix(torch.tensor([[3, 1], [0, 2]]), ["a", "b"], {str(tmp_path / "cm.png")!r})
assert matplotlib.get_backend().lower() == "svg", matplotlib.get_backend()
"""
    res = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    assert (tmp_path / "cm.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
