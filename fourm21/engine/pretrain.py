"""fourm21-pretrain: self-supervised backbone pretraining on unlabelled images (SimCLR-style contrastive).

Writes ``backbone.safetensors`` (timm parameter names), which any multitask run loads with
``model.backbone.checkpoint=PATH``.

    fourm21-pretrain data.root=my_photos/ trainer.max_epochs=50
"""

from __future__ import annotations

import math

import hydra
import lightning as L
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from safetensors.torch import save_file
from torch import nn
from torch.utils.data import DataLoader

from fourm21.engine.common import CONFIG_DIR, friendly_errors, run_dir_of, save_config, setup_runtime
from fourm21.losses.contrastive import nt_xent
from fourm21.metrics.report import write_report
from fourm21.models.backbone import TimmBackbone


class ContrastivePretrainer(L.LightningModule):
    """Backbone + projection MLP on the concatenated pooled levels; NT-Xent between two views."""

    def __init__(self, backbone: dict, proj_dim: int = 128, temperature: float = 0.2, lr: float = 2e-3,
                 weight_decay: float = 0.05) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.backbone = TimmBackbone(**backbone)
        width = sum(self.backbone.channels)
        self.projector = nn.Sequential(nn.Linear(width, 512), nn.BatchNorm1d(512), nn.ReLU(inplace=True),
                                       nn.Linear(512, proj_dim))

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([f.mean(dim=(2, 3)) for f in self.backbone(x)], dim=1)

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        z1, z2 = self.projector(self.embed(batch["view1"])), self.projector(self.embed(batch["view2"]))
        loss = nt_xent(z1, z2, self.hparams.temperature)
        self.log("pretrain/loss", loss, prog_bar=True, on_step=True, on_epoch=True)
        return loss

    def configure_optimizers(self) -> dict:
        opt = torch.optim.AdamW(self.parameters(), lr=self.hparams.lr, weight_decay=self.hparams.weight_decay)
        total = max(int(self.trainer.estimated_stepping_batches), 1)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(s / total, 1.0))))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


def run_pretrain(cfg: DictConfig) -> dict:
    setup_runtime(cfg)
    run_dir = run_dir_of(cfg)
    save_config(cfg, run_dir)
    dataset = instantiate(cfg.dataset)
    loader = DataLoader(dataset, batch_size=cfg.batch_size, shuffle=True, drop_last=True,
                        num_workers=cfg.num_workers, persistent_workers=cfg.num_workers > 0)
    module = ContrastivePretrainer(OmegaConf.to_container(cfg.backbone, resolve=True), cfg.proj_dim,
                                   cfg.temperature, cfg.lr, cfg.weight_decay)
    logger = L.pytorch.loggers.CSVLogger(str(run_dir), name="logs", version="")
    trainer = instantiate(cfg.trainer, logger=logger, default_root_dir=str(run_dir), enable_checkpointing=False)
    trainer.fit(module, loader)
    out = run_dir / "backbone.safetensors"
    save_file({k: v.detach().cpu().contiguous() for k, v in module.backbone.body.state_dict().items()}, str(out),
              metadata={"backbone": module.backbone.name, "method": "simclr"})
    loss = float(trainer.callback_metrics.get("pretrain/loss_epoch", float("nan")))
    report = {"pretrain/loss": loss, "pretrain/images": float(len(dataset))}
    write_report(run_dir, report, title="fourm21 self-supervised pretraining", notes={"weights": str(out)})
    print(f"backbone weights: {out}  (use: model.backbone.checkpoint={out})")
    return report


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="pretrain")
@friendly_errors
def main(cfg: DictConfig) -> None:
    run_pretrain(cfg)


if __name__ == "__main__":
    main()
