"""Semi-supervised training: ``MultiTaskModule`` plus a teacher that pseudo-labels unlabelled images.

With ``semi.enabled`` every training batch is ``{"sup": labelled, "unsup": unlabelled}``
(``MultiTaskDataModule.attach_unlabelled``). The teacher labels the unlabelled images with its confident
predictions (``fourm21.training.pseudo_labels``) and the student learns them on a photometrically jittered
copy, from optimiser step ``semi.start_step`` on, weighted by ``semi.weight``.

The teacher (``semi.teacher``): ``ema``, a moving average of the student (mean teacher) — with
``ema.enabled`` that is the evaluation EMA itself (one average, ``ema.*`` in the checkpoint), otherwise
its own average at ``semi.ema_decay`` (``teacher.*``), built by the same ``build_ema`` and updated after
every optimiser step by the parent's hook; or ``student``, the current weights.
"""

from __future__ import annotations

from typing import Any

import torch
from omegaconf import DictConfig
from torch.optim.swa_utils import AveragedModel

from fourm21.errors import ConfigError
from fourm21.inference.decode import DecodeSettings, decode
from fourm21.tasks import head_losses
from fourm21.training.ema import build_ema
from fourm21.training.module import MultiTaskModule, config_key
from fourm21.training.pseudo_labels import photometric_jitter, pseudo_targets

TEACHERS = ("ema", "student")


class SemiSupervisedModule(MultiTaskModule):
    """The multitask module trained on labelled batches and the teacher's pseudo-labels of unlabelled ones."""

    def __init__(self, model: dict, loss: dict, optim: dict, meta: dict | None = None,
                 semi: dict | None = None, ema: dict | None = None) -> None:
        super().__init__(model=model, loss=loss, optim=optim, meta=meta, semi=semi, ema=ema)
        self.semi = dict(semi or {})
        if config_key(self.semi, "teacher", "semi") not in TEACHERS:
            raise ConfigError(f"semi.teacher: must be one of {', '.join(TEACHERS)}, got '{self.semi['teacher']}'")
        self._teacher_is_ema = self.semi["teacher"] == "ema"
        # the teacher's own average (``teacher.*`` in the checkpoint); with ema.enabled the teacher is the EMA
        self.teacher: AveragedModel | None = build_ema(self.model, float(config_key(self.semi, "ema_decay", "semi"))) \
            if self._teacher_is_ema and self.ema is None else None

    @property
    def averaged(self) -> AveragedModel | None:
        """The EMA, or else the teacher's own average: either is updated after every optimiser step."""
        return self.ema if self.ema is not None else self.teacher

    @property
    def mean_teacher(self) -> AveragedModel | None:
        """``semi.teacher=ema``: the mean teacher (the ``ema`` itself when that is enabled); None for ``student``."""
        return self.averaged if self._teacher_is_ema else None

    def training_step(self, batch: dict[str, Any] | None, batch_idx: int) -> torch.Tensor | None:
        if batch is None or "sup" not in batch:  # a plain batch (no unlabelled set attached): supervised only
            return super().training_step(batch, batch_idx)
        if batch["sup"] is None:
            return None  # every labelled image of the batch was skipped: no step
        total, _ = self._step(batch["sup"], "train")
        if batch.get("unsup") is not None and self.global_step >= int(config_key(self.semi, "start_step", "semi")):
            total = total + float(config_key(self.semi, "weight", "semi")) * self._pseudo_label_step(batch["unsup"])
        return total

    def _pseudo_label_step(self, batch: dict[str, Any]) -> torch.Tensor:
        """The teacher labels ``batch`` (its confident predictions only); the student learns them on a jittered view."""
        teacher = self.mean_teacher.module if self.mean_teacher is not None else self.model
        was_training = teacher.training
        teacher.eval()
        with torch.no_grad():
            outputs = teacher(batch["image"])
            settings = DecodeSettings.from_net(teacher)
            preds = decode(outputs, tuple(batch["image"].shape[-2:]), settings)
        teacher.train(was_training)
        batch = pseudo_targets(outputs, preds, batch, config_key(self.semi, "thresholds", "semi"), settings)
        jitter = float(config_key(self.semi, "jitter", "semi"))
        backbone = self.model.backbone  # jittered in the normalised space, handed over as pixels (INPUT_CONTRACT)
        batch["image"] = backbone.denormalize(photometric_jitter(backbone.normalize(batch["image"]), jitter))
        total, logs = self.criterion(head_losses(self.model, self.model(batch["image"]), batch))
        logs.pop("loss")
        bs = batch["image"].shape[0]
        logs.update(batch.pop("pseudo_stats"))
        self.log_dict({f"train/pseudo/{k.removeprefix('pseudo/')}": v for k, v in logs.items()}, batch_size=bs,
                      on_step=False, on_epoch=True)
        self.log("train/pseudo/loss", total.detach(), batch_size=bs, on_step=False, on_epoch=True)
        return total


def module_class(semi: dict | DictConfig | None) -> type[MultiTaskModule]:
    """The module that trains (or reloads) a run with these ``semi`` settings."""
    return SemiSupervisedModule if semi and semi.get("enabled") else MultiTaskModule
