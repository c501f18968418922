"""The training code: the LightningModule (and its semi-supervised subclass), the weight EMA, callbacks,
schedules, the evaluation that ends every run and writes its report. The Hydra entry points (``fourm21/engine/``)
stand on it."""
