"""fourm21-pretrain: self-supervised backbone pretraining on unlabelled images.

Two methods: ``simclr`` (contrastive, two views, any backbone) and ``simmim`` (masked-image
modelling, ViT only); ``method=auto`` picks SimMIM for a ViT and SimCLR otherwise. Writes
``backbone.safetensors`` (timm parameter names), which any multitask run loads with
``model.backbone.checkpoint=PATH``.

    fourm21-pretrain data.root=my_photos/ trainer.max_epochs=50
    fourm21-pretrain backbone=vit_tiny method=simmim
"""

from __future__ import annotations

from pathlib import Path

import hydra
import lightning as L
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict
from safetensors.torch import save_file
from torch import nn
from torch.utils.data import DataLoader

from fourm21.data.transforms import reseed_worker_transforms
from fourm21.data.unlabelled import collate_views
from fourm21.engine.common import CONFIG_DIR, friendly_errors, run_dir_of, save_config, setup_runtime
from fourm21.errors import ConfigError
from fourm21.losses.contrastive import nt_xent
from fourm21.losses.masked_image import masked_pixel_l1
from fourm21.metrics.report import write_report
from fourm21.models.backbone import TimmBackbone
from fourm21.models.masked_image import MaskedImageModel, random_block_mask
from fourm21.training.schedules import warmup_cosine

METHODS = ("simclr", "simmim")


class _Pretrainer(L.LightningModule):
    """What both methods share: AdamW (``lr``, ``weight_decay`` hyper-parameters), a cosine to 0 per step."""

    def configure_optimizers(self) -> dict:
        opt = torch.optim.AdamW(self.parameters(), lr=self.hparams.lr, weight_decay=self.hparams.weight_decay)
        sched = warmup_cosine(opt, int(self.trainer.estimated_stepping_batches), warmup_frac=0.0, warmup_steps=0,
                              min_lr_ratio=0.0)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


class ContrastivePretrainer(_Pretrainer):
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

    def training_step(self, batch: dict | None, batch_idx: int) -> torch.Tensor | None:
        if batch is None:  # every image of the batch was skipped
            return None
        z1, z2 = self.projector(self.embed(batch["view1"])), self.projector(self.embed(batch["view2"]))
        loss = nt_xent(z1, z2, self.hparams.temperature)
        self.log("pretrain/loss", loss, prog_bar=True, on_step=True, on_epoch=True)
        return loss


class MaskedImagePretrainer(_Pretrainer):
    """SimMIM: mask ``mask_ratio`` of the image in ``mask_patch``-pixel blocks, reconstruct the masked pixels."""

    def __init__(self, backbone: dict, mask_ratio: float = 0.6, mask_patch: int = 16, lr: float = 2e-3,
                 weight_decay: float = 0.05) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.mim = MaskedImageModel(TimmBackbone(**backbone))
        self.backbone = self.mim.backbone
        p = self.mim.patch_size
        if mask_patch % p:
            raise ConfigError(f"mask_patch: {mask_patch} must be a multiple of the ViT patch size {p}")
        if not 0 < mask_ratio < 1:
            raise ConfigError(f"mask_ratio: must be in (0, 1), got {mask_ratio}")

    def training_step(self, batch: dict | None, batch_idx: int) -> torch.Tensor | None:
        if batch is None:  # every image of the batch was skipped
            return None
        images = batch["view1"]
        grid = self.mim.grid(tuple(images.shape[-2:]))
        mask = random_block_mask(images.shape[0], grid, self.hparams.mask_patch // self.mim.patch_size,
                                 self.hparams.mask_ratio, device=images.device)
        # the decoder predicts the normalised pixels (SimMIM's target), the network takes raw ones
        target = self.mim.backbone.normalize(images)
        loss = masked_pixel_l1(self.mim(images, mask), target, mask, self.mim.patch_size)
        self.log("pretrain/loss", loss, prog_bar=True, on_step=True, on_epoch=True)
        return loss


def resolve_method(method: str, backbone: TimmBackbone | dict) -> str:
    """``auto`` -> simmim for a ViT, simclr otherwise; anything else must be a known method."""
    if method == "auto":
        name = backbone.name if isinstance(backbone, TimmBackbone) else str(backbone.get("name", ""))
        return "simmim" if ("vit" in name or "deit" in name) else "simclr"
    if method not in METHODS:
        raise ConfigError(f"method: must be one of auto, {', '.join(METHODS)}; got '{method}'")
    return method


def backbone_config(cfg: DictConfig) -> dict:
    """``backbone`` as a dict; ``backbone=vit_tiny`` names a file of fourm21/configs/model/backbone/."""
    if isinstance(cfg.backbone, str):
        path = Path(CONFIG_DIR) / "model" / "backbone" / f"{cfg.backbone}.yaml"
        if not path.is_file():
            known = ", ".join(sorted(p.stem for p in path.parent.glob("*.yaml")))
            raise ConfigError(f"backbone: no config '{cfg.backbone}' (known: {known}); "
                              f"or set backbone.name=<timm model>")
        with open_dict(cfg):
            cfg.backbone = OmegaConf.load(path)
    return OmegaConf.to_container(cfg.backbone, resolve=True)


def run_pretrain(cfg: DictConfig) -> dict:
    setup_runtime(cfg)
    backbone = backbone_config(cfg)
    run_dir = run_dir_of(cfg)
    save_config(cfg, run_dir)
    method = resolve_method(cfg.method, backbone)
    view = cfg[method]
    dataset = instantiate(cfg.dataset, views=2 if method == "simclr" else 1,
                          transform={"min_scale": view.min_scale, "color_jitter": view.color_jitter,
                                     "gray_p": view.gray_p})
    if len(dataset) < cfg.batch_size:
        raise ConfigError(f"batch_size: {cfg.batch_size} is more than the {len(dataset)} images under {cfg.data.root}")
    loader = DataLoader(dataset, batch_size=cfg.batch_size, shuffle=True, drop_last=True, collate_fn=collate_views,
                        worker_init_fn=reseed_worker_transforms,
                        num_workers=cfg.num_workers, persistent_workers=cfg.num_workers > 0)
    if method == "simclr":
        module = ContrastivePretrainer(backbone, view.proj_dim, view.temperature, cfg.lr, cfg.weight_decay)
    else:
        module = MaskedImagePretrainer(backbone, view.mask_ratio, view.mask_patch, cfg.lr, cfg.weight_decay)
    logger = L.pytorch.loggers.CSVLogger(str(run_dir), name="logs", version="")
    trainer = instantiate(cfg.trainer, logger=logger, default_root_dir=str(run_dir), enable_checkpointing=False)
    trainer.fit(module, loader)
    out = run_dir / "backbone.safetensors"
    save_file({k: v.detach().cpu().contiguous() for k, v in module.backbone.body.state_dict().items()}, str(out),
              metadata={"backbone": module.backbone.name, "method": method})
    loss = float(trainer.callback_metrics.get("pretrain/loss_epoch", float("nan")))
    report = {"pretrain/loss": loss, "pretrain/images": float(len(dataset)),
              "data/skipped_images": float(len(dataset.skip_log))}
    write_report(run_dir, report, title=f"fourm21 self-supervised pretraining ({method})",
                 notes={"weights": str(out), "method": method})
    print(f"backbone weights: {out}  (use: model.backbone.checkpoint={out})")
    return report


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="pretrain")
@friendly_errors
def main(cfg: DictConfig) -> None:
    run_pretrain(cfg)


if __name__ == "__main__":
    main()
