import json

import numpy as np
import pytest
import torch

from fourm21.engine.fewshot import run_episodes
from fourm21.errors import ConfigError
from tests.conftest import run_cli_here
from tests.data.test_cifar10 import make_cifar_tree


def test_prototype_episodes_score_separable_features_perfectly():
    g = torch.Generator().manual_seed(0)
    labels = torch.arange(6).repeat_interleave(10)
    feats = torch.nn.functional.normalize(torch.eye(6)[labels] + 0.05 * torch.randn(60, 6, generator=g), dim=1)
    acc = run_episodes(feats, labels, n_way=5, k_shot=1, n_query=5, episodes=50)
    assert acc.shape == (50,) and acc.mean() == 1.0
    noise = torch.nn.functional.normalize(torch.randn(60, 6, generator=g), dim=1)
    assert run_episodes(noise, labels, 5, 1, 5, 200).mean() < 0.5  # random features: near chance (0.2)
    with pytest.raises(ConfigError, match="n_way"):
        run_episodes(feats, labels, n_way=7, k_shot=1, n_query=1, episodes=1)


def test_fewshot_cli_on_held_out_classes(tiny_run, tmp_path):
    work, run_dir, _ = tiny_run
    root = make_cifar_tree(tmp_path / "cifar", per_class=4)
    out = tmp_path / "fs"
    res = run_cli_here("fourm21-fewshot", [f"ckpt_path={run_dir / 'checkpoints/best.ckpt'}", f"data.root={root}",
                                      "k_shots=[1,2]", "n_query=2", "episodes=30", f"hydra.run.dir={out}"], work)
    assert res.returncode == 0, res.stderr[-3000:]
    report = json.loads((out / "report.json").read_text())
    for k in (1, 2):
        acc, ci = report[f"test/fewshot.5way{k}shot/acc"], report[f"test/fewshot.5way{k}shot/ci95"]
        # the tree's classes differ by colour: features that carry the image tell them apart (chance: 0.2)
        assert acc >= 0.9 and 0 <= ci < 0.2 and np.isfinite(ci), (k, acc, ci)
    assert "5-way 1-shot" in res.stdout
