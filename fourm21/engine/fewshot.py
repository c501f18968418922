"""fourm21-fewshot: N-way K-shot episodes on classes the model never saw, with the trained backbone.

Each episode draws N classes, K labelled "support" images and Q "query" images per class; a query
gets the class of the nearest support centroid (cosine, on pooled backbone features: a prototype
classifier). Reported: mean accuracy and its 95 % confidence interval over the episodes.

    fourm21-fewshot ckpt_path=runs/.../best.ckpt data.root=data/cifar10-jpg
"""

from __future__ import annotations

import json
import math

import hydra
import numpy as np
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig
from rich.progress import track
from torch.nn import functional as F
from torch.utils.data import DataLoader

from fourm21.data.collate import collate_samples
from fourm21.engine.common import CONFIG_DIR, friendly_errors, run_dir_of, setup_runtime
from fourm21.errors import ConfigError
from fourm21.inference.loading import load
from fourm21.metrics.report import write_report


@torch.no_grad()
def embed(net: torch.nn.Module, dataset, batch_size: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, D) L2-normalised features (every backbone level, average pooled, concatenated) and (N,) labels."""
    feats, labels = [], []
    for batch in DataLoader(dataset, batch_size=batch_size, collate_fn=collate_samples):
        if batch is None:  # every image of the batch skipped (data.on_bad_image=skip)
            continue
        levels = net.backbone(batch["image"])
        feats.append(torch.cat([f.mean(dim=(2, 3)) for f in levels], dim=1))
        labels.append(batch["label"])
    return F.normalize(torch.cat(feats), dim=1), torch.cat(labels)


def run_episodes(feats: torch.Tensor, labels: torch.Tensor, n_way: int, k_shot: int, n_query: int,
                 episodes: int, seed: int = 0) -> np.ndarray:
    """Accuracy of the nearest-centroid classifier on each of ``episodes`` random episodes."""
    rng = np.random.default_rng(seed)
    classes = labels.unique().tolist()
    if len(classes) < n_way:
        raise ConfigError(f"n_way={n_way} but the data has only {len(classes)} classes")
    by_class = {c: (labels == c).nonzero().flatten().numpy() for c in classes}
    short = [c for c, idx in by_class.items() if len(idx) < k_shot + n_query]
    if short:
        raise ConfigError(f"k_shot + n_query = {k_shot + n_query} exceeds the images of class(es) {short}")
    acc = np.empty(episodes)
    for e in range(episodes):
        chosen = rng.choice(classes, n_way, replace=False)
        support, query = [], []
        for c in chosen:
            idx = rng.choice(by_class[c], k_shot + n_query, replace=False)
            support.append(feats[idx[:k_shot]])
            query.append(feats[idx[k_shot:]])
        protos = F.normalize(torch.stack([s.mean(0) for s in support]), dim=1)  # (N, D)
        q = torch.cat(query)  # (N*Q, D)
        truth = torch.arange(n_way).repeat_interleave(n_query)
        acc[e] = float(((q @ protos.T).argmax(1) == truth).float().mean())
    return acc


def run_fewshot(cfg: DictConfig) -> dict:
    setup_runtime(cfg)
    run_dir = run_dir_of(cfg)
    model = load(cfg.ckpt_path)
    dataset = instantiate(cfg.dataset)
    feats, labels = embed(model.net, dataset, cfg.batch_size)
    report = {}
    for k in track(list(cfg.k_shots), description="episodes"):
        acc = run_episodes(feats, labels, cfg.n_way, k, cfg.n_query, cfg.episodes, cfg.seed)
        ci = 1.96 * acc.std(ddof=1) / math.sqrt(len(acc))
        report[f"test/fewshot.{cfg.n_way}way{k}shot/acc"] = float(acc.mean())
        report[f"test/fewshot.{cfg.n_way}way{k}shot/ci95"] = float(ci)
        print(f"{cfg.n_way}-way {k}-shot: {acc.mean():.4f} ± {ci:.4f} (95 % CI, {len(acc)} episodes)")
    write_report(run_dir, report, title="fourm21 few-shot evaluation",
                 notes={"checkpoint": cfg.ckpt_path, "images": len(labels), "classes": labels.unique().numel(),
                        "queries per class": cfg.n_query})
    (run_dir / "fewshot_config.json").write_text(json.dumps({"n_way": cfg.n_way, "k_shots": list(cfg.k_shots),
                                                             "episodes": cfg.episodes}))
    return report


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="fewshot")
@friendly_errors
def main(cfg: DictConfig) -> None:
    run_fewshot(cfg)


if __name__ == "__main__":
    main()
