"""LightningModule: the multitask network, its weighted loss, AdamW + warm-up/cosine, and evaluation."""

from __future__ import annotations

import random
from collections.abc import Mapping
from typing import Any

import lightning as L
import numpy as np
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch.optim.swa_utils import AveragedModel

from fourm21.errors import ConfigError
from fourm21.inference.checkpoints import DATA_CONFIG, inference_prefix
from fourm21.inference.decode import DecodeSettings, decode
from fourm21.inference.results import build_evaluator
from fourm21.losses.multitask import MultiTaskLoss
from fourm21.metrics.evaluator import MultiTaskEvaluator, selection_score
from fourm21.models.backbone import INPUT_CONTRACT
from fourm21.models.multitask import MultiTaskNet, build_model
from fourm21.tasks import head_losses
from fourm21.training.ema import build_ema, update_average


def config_key(section: dict, key: str, name: str) -> Any:
    """``section[key]``; a ConfigError naming ``name.key`` when the config leaves it out (no default in code:
    the shipped YAML holds every default)."""
    if key not in section:
        raise ConfigError(f"{name}.{key} is missing from the config (the shipped fourm21/configs/ sets it)")
    return section[key]


class MultiTaskModule(L.LightningModule):
    """Trains every enabled head at once; logs ``stage/task/metric``.

    The model, loss and optimiser configs are saved in the checkpoint, so ``load_from_checkpoint``
    rebuilds the exact network without the original config files.

    Weight EMA (``ema.enabled``): an exponential moving average of the network (``torch.optim.swa_utils.
    AveragedModel``, parameters and buffers, updated after every optimiser step) is registered as the
    submodule ``ema``. Validation (hence ``val/score`` and best.ckpt), the final report and ``forward`` in
    eval mode run it (``inference_net``), and every checkpoint reader takes its weights
    (``fourm21.inference.checkpoints.inference_prefix`` is the one place that decides). The checkpoint holds
    both: ``model.*`` (what training continues from) and ``ema.*`` (the average and its update count), so a
    resume continues both exactly. Semi-supervised training (the mean teacher, pseudo-labels) is the subclass
    ``fourm21.training.semi_supervised.SemiSupervisedModule``; ``semi`` is kept here in the hyper-parameters only,
    so a checkpoint says how it was trained.

    Why not Lightning's ``WeightAveraging``/``EMAWeightAveraging`` callback (present in 2.6): it averages the
    whole LightningModule (loss weights and the teacher too), swaps the average in at *every* validation
    epoch start, including the ``trainer.validate(ckpt_path=best)`` after fitting, where it would swap
    the final average in over the best checkpoint's weights; and the teacher, which the module needs in
    ``training_step`` and which must exist without the callback, could not be the same object.
    """

    def __init__(self, model: dict, loss: dict, optim: dict, meta: dict | None = None,
                 semi: dict | None = None, ema: dict | None = None) -> None:
        super().__init__()
        self.save_hyperparameters()
        # what inference needs besides weights: input size, normalisation, class names (filled in setup)
        self.hparams.meta = dict(meta or {})
        self.model: MultiTaskNet = build_model(OmegaConf.create(model))
        # the network's input contract and statistics (the backbone's): a checkpoint reader needs no more
        self.hparams.meta.update(input=INPUT_CONTRACT, mean=list(self.model.backbone.mean),
                                 std=list(self.model.backbone.std))
        self.criterion = MultiTaskLoss(**loss)
        self.optim_cfg = dict(optim)
        # the one average (``ema.enabled``): evaluated and saved for inference (and the subclass' mean teacher);
        # validation, checkpoints' inference weights and export use it
        self.ema: AveragedModel | None = build_ema(self.model, float(ema["decay"]), float(ema["ramp_steps"])) \
            if ema and ema.get("enabled") else None
        # multi-label thresholds are tuned on val while fitting only; a report (the end of training, fourm21-eval
        # on any split) scores at the thresholds the checkpoint holds (evaluate_module turns this off)
        self.tune_thresholds = True
        # decode settings set for a report (fourm21-eval sem_label_stride=4 ...), see DecodeSettings.with_overrides
        self.decode_overrides: dict[str, Any] = {}
        self._train_sums: dict[str, list] = {}  # loss part -> [sum over images, images] this training epoch
        self._averaged_at_step = 0  # global_step of the last EMA update (one update per optimiser step)
        self.evaluators: list[MultiTaskEvaluator] = []
        self.val_set_names: list[str] = []
        # first val batch's images and predictions per val loader, for the plots
        self.last_val_preds: dict[int, tuple[torch.Tensor, list[dict]]] = {}
        self.last_metrics: dict[str, float] = {}

    @classmethod
    def from_config(cls, cfg: DictConfig) -> MultiTaskModule:
        to = lambda c: OmegaConf.to_container(c, resolve=True)  # noqa: E731
        # the data config unresolved (filled from the data already): fourm21-eval evaluates on it by default
        meta = {"img_size": cfg.data.get("img_size"), "data": cfg.data.get("name"),
                DATA_CONFIG: OmegaConf.to_container(cfg.data, resolve=False)}
        semi, ema = cfg.get("semi"), cfg.get("ema")
        return cls(model=to(cfg.model), loss=to(cfg.loss), optim=to(cfg.optim), meta=meta,
                   semi={k: v for k, v in to(semi).items() if k != "dataset"} if semi and semi.enabled else None,
                   ema=to(ema) if ema and ema.enabled else None)

    @property
    def averaged(self) -> AveragedModel | None:
        """The moving average of the network that is updated after every optimiser step, if any."""
        return self.ema

    @property
    def inference_net(self) -> MultiTaskNet:
        """The network validation, the report and inference run: the EMA's copy under ``ema.enabled``,
        else the trained one (the same rule as the checkpoint readers)."""
        return self.get_submodule(inference_prefix(self.hparams).rstrip("."))

    def forward(self, images: torch.Tensor) -> dict[str, dict[str, torch.Tensor]]:
        return (self.model if self.training else self.inference_net)(images)

    def _step(self, batch: dict[str, Any], stage: str) -> tuple[torch.Tensor, dict]:
        outputs = self.model(batch["image"], batch.get("caption_tokens"))
        total, logs = self.criterion(head_losses(self.model, outputs, batch))
        bs = batch["image"].shape[0]
        logs.pop("loss")
        if stage != "train":
            self.log_dict({f"{stage}/{k}": v for k, v in logs.items()}, batch_size=bs, on_epoch=True)
        else:
            # each head's loss parts: summed here for their epoch means (train/<part>_epoch, logged at the epoch's
            # end) and logged per step only on the steps the logger writes (trainer.log_every_n_steps); a dozen
            # self.log calls every step cost ~3 % of a small model's step. The total loss is logged every step.
            for k, v in logs.items():
                acc = self._train_sums.setdefault(k, [0.0, 0])
                acc[0], acc[1] = acc[0] + v.detach() * bs, acc[1] + bs
            if self._logs_this_step():
                self.log_dict({f"{stage}/{k}_step": v for k, v in logs.items()}, batch_size=bs, on_step=True,
                              on_epoch=False)
        self.log(f"{stage}/loss", total.detach(), batch_size=bs, prog_bar=True, on_step=stage == "train",
                 on_epoch=True)
        return total, outputs

    def on_train_epoch_end(self) -> None:
        if self._train_sums:
            self.log_dict({f"train/{k}_epoch": total / n for k, (total, n) in self._train_sums.items()},
                          sync_dist=True)
            self._train_sums = {}

    def _attached_trainer(self) -> L.Trainer | None:
        """The Trainer running this module, None outside one (Lightning raises on ``self.trainer`` then)."""
        try:
            return self.trainer
        except RuntimeError:
            return None

    def _logs_this_step(self) -> bool:
        """Whether the logger writes this training step (Lightning's rule, from its public state: every
        ``log_every_n_steps`` optimiser steps, and when stopping), True outside a Trainer."""
        trainer = self._attached_trainer()
        if trainer is None:
            return True
        return bool(trainer.fast_dev_run or trainer.should_stop
                    or (trainer.global_step + 1) % max(int(trainer.log_every_n_steps), 1) == 0)

    def training_step(self, batch: dict[str, Any] | None, batch_idx: int) -> torch.Tensor | None:
        if batch is None:
            return None  # every image of the batch was skipped (data.on_bad_image=skip): no step
        total, _ = self._step(batch, "train")
        return total

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """The random-number states go with the weights, so a resumed run draws what the killed one would have."""
        kind, keys, pos, has_gauss, gauss = np.random.get_state()
        checkpoint["rng_states"] = {"torch": torch.get_rng_state(), "python": random.getstate(),
                                    "numpy": (kind, torch.from_numpy(keys.copy()), pos, has_gauss, gauss)}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self._match_averaged_keys(checkpoint)
        states = checkpoint.get("rng_states")
        if not states:
            return
        torch.set_rng_state(states["torch"])
        random.setstate(states["python"])
        kind, keys, pos, has_gauss, gauss = states["numpy"]
        np.random.set_state((kind, keys.numpy(), pos, has_gauss, gauss))

    def _match_averaged_keys(self, checkpoint: dict[str, Any]) -> None:
        """Resuming with ``ema.enabled`` switched (or the teacher's EMA becoming the ``ema``): the checkpoint's
        average is renamed, started from its trained weights, or dropped, so the weights load."""
        state = checkpoint.get("state_dict")
        if not isinstance(state, dict):
            return
        children = dict(self.named_children())
        mine = next((n for n in ("ema", "teacher") if children.get(n) is not None), None)
        present = [n for n in ("ema", "teacher") if any(k.startswith(f"{n}.") for k in state)]
        if mine in present:
            return
        for name in present:  # an average this module has not got, or has under the other name
            moved = {k: state.pop(k) for k in [k for k in state if k.startswith(f"{name}.")]}
            if mine is not None:
                state.update({f"{mine}.{k.removeprefix(f'{name}.')}": v for k, v in moved.items()})
                return
        if mine is not None:  # no average in the file: start it from the trained weights
            state.update({f"{mine}.module.{k.removeprefix('model.')}": v.clone() for k, v in list(state.items())
                          if k.startswith("model.")})
            state[f"{mine}.n_averaged"] = torch.tensor(0, dtype=torch.long)

    def on_train_start(self) -> None:
        self._averaged_at_step = self.trainer.global_step  # after a resume: the restored step

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        # after each optimiser step (not after a skipped batch or a gradient-accumulation micro-batch)
        if self.averaged is not None and self.trainer.global_step > self._averaged_at_step:
            update_average(self.averaged, self.model)
            self._averaged_at_step = self.trainer.global_step

    def setup(self, stage: str) -> None:
        trainer = self._attached_trainer()
        dm = getattr(trainer, "datamodule", None) if trainer is not None else None
        if dm is not None and getattr(dm, "val_sets", None):
            self.build_evaluators(dm.val_sets)
            for key in ("class_names", "image_class_names", "cat_ids", "attribute_classes", "label_names"):
                names = next((getattr(ds, key) for ds in dm.val_sets.values() if getattr(ds, key, None)), None)
                names = dict(names) if isinstance(names, dict) else list(names) if names is not None else None
                if names and not self.hparams.meta.get(key):
                    self.hparams.meta[key] = names

    def build_evaluators(self, val_sets: Mapping[str, Any] | Any) -> None:
        """One evaluator per val set (in val-loader order); each scores the tasks its labels cover."""
        sets = dict(val_sets) if isinstance(val_sets, Mapping) else {"main": val_sets}
        nets = [self.inference_net] + ([self.model] if self.model is not self.inference_net else [])
        settings = self.decode_settings(self.inference_net)
        heads = {name: [net.heads[name] for net in nets] for name in settings.tasks}
        self.evaluators = [build_evaluator(settings, heads, ds, self.tune_thresholds) for ds in sets.values()]
        self.val_set_names = list(sets)
        self.last_val_preds = {}

    def decode_settings(self, net: MultiTaskNet) -> DecodeSettings:
        """What validation decodes with: the heads' settings and the ``decode_overrides``."""
        return DecodeSettings.from_net(net).with_overrides(**self.decode_overrides)

    @property
    def evaluator(self) -> MultiTaskEvaluator | None:
        return self.evaluators[0] if self.evaluators else None

    def on_validation_epoch_start(self) -> None:
        for ev in self.evaluators:
            ev.reset()

    def validation_step(self, batch: dict[str, Any] | None, batch_idx: int, dataloader_idx: int = 0) -> None:
        if batch is None:
            return  # every image of the batch was skipped
        net = self.inference_net  # ema.enabled: the moving average is what is scored (and best.ckpt picked by)
        outputs = net(batch["image"], batch.get("caption_tokens"))
        total, logs = self.criterion(head_losses(net, outputs, batch))
        logs.pop("loss")
        if len(self.evaluators) <= 1:
            logs["loss"] = total.detach()  # a total over different task sets would mix unlike things
        self.log_dict({f"val/{k}": v for k, v in logs.items()}, batch_size=batch["image"].shape[0], on_epoch=True,
                      add_dataloader_idx=False, sync_dist=True)  # DDP: the mean over every process's images
        preds = decode(outputs, tuple(batch["image"].shape[-2:]), self.decode_settings(net))
        if dataloader_idx < len(self.evaluators):
            self.evaluators[dataloader_idx].update(preds, batch)
        if batch_idx == 0:
            self.last_val_preds[dataloader_idx] = (batch["image"][:8].cpu(),
                                                   [{k: v.cpu() for k, v in p.items()} for p in preds[:8]])

    def on_validation_epoch_end(self) -> None:
        if not self.evaluators or self.trainer.sanity_checking:
            return
        metrics: dict[str, float] = {}
        for ev in self.evaluators:  # a task that tunes on val (multi-label thresholds) writes into the heads here
            metrics.update(ev.compute())
        self.last_metrics = dict(metrics)  # exact values: Lightning's logged copies are float32
        # the same on every DDP process (the evaluators gather first): sync_dist only says so to Lightning
        self.log_dict({f"val/{k}": v for k, v in metrics.items()}, prog_bar=False, sync_dist=True)
        score = selection_score(metrics, self.evaluators[0].main_metrics)
        if score is not None:
            self.log("val/score", score, prog_bar=True, sync_dist=True)

    def test_step(self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0) -> None:
        self.validation_step(batch, batch_idx, dataloader_idx)

    def configure_gradient_clipping(self, optimizer: torch.optim.Optimizer, gradient_clip_val: float | None = None,
                                    gradient_clip_algorithm: str | None = None) -> None:
        """Lightning's mixed-precision plugin refuses to clip for a fused optimizer (``optim.optimizer.fused``),
        which would unscale fp16 gradients itself; with no gradient scaler (bf16, fp32) the gradients are the
        true ones, so they are clipped here as Lightning would."""
        fused = getattr(optimizer, "_step_supports_amp_scaling", False)
        if gradient_clip_val and fused and getattr(self.trainer.precision_plugin, "scaler", None) is None:
            params = [p for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
            if gradient_clip_algorithm == "value":
                torch.nn.utils.clip_grad_value_(params, gradient_clip_val)
            else:
                torch.nn.utils.clip_grad_norm_(params, gradient_clip_val)
            return
        super().configure_gradient_clipping(optimizer, gradient_clip_val, gradient_clip_algorithm)

    def configure_optimizers(self) -> dict:
        """``optim.optimizer`` over two parameter groups (no weight decay on norms, biases and loss weights) and
        ``optim.scheduler`` stepped per optimiser step; both built from their ``_target_``."""
        cfg = self.optim_cfg
        decay, no_decay = [], []
        for name, p in self.named_parameters():
            if not p.requires_grad:
                continue
            (no_decay if p.ndim <= 1 or name.startswith("criterion.") else decay).append(p)
        key = lambda name: config_key(cfg, name, "optim")  # noqa: E731 - the YAML is the one source of defaults
        opt = instantiate(key("optimizer"))([{"params": decay, "weight_decay": key("weight_decay")},
                                             {"params": no_decay, "weight_decay": 0.0}])
        sched = instantiate(key("scheduler"))(opt, total_steps=int(self.trainer.estimated_stepping_batches))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
