"""fourm21: one vision network for classification, detection and segmentation.

    import fourm21
    model = fourm21.load("runs/train/.../checkpoints/best.ckpt")   # or an exported directory, or hf://owner/name
    preds = model.predict(["photo.jpg"])                             # plain dicts of tensors per image
    dets = model.predict(["photo.jpg"], output="supervision")        # or supervision.Detections per image
    fourm21.save_pretrained(model, "my-model")                       # safetensors + config + classes + model card
"""

import os

__version__ = "0.1.0"

# albumentations asks PyPI for a newer version whenever it is imported (a network call of up to 2 s at every
# CLI start, and a failed one offline); the user's own setting wins.
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")


def load(path, device="cpu"):
    """Load a ``.ckpt``, an exported directory or ``hf://owner/name`` for inference (see ``fourm21.api``)."""
    from fourm21.api import load as _load

    return _load(path, device)


def save_pretrained(model, directory, report=None):
    """Write a model (or a ``.ckpt``) as a directory ``fourm21.load`` reads, with a model card (``fourm21.hub``)."""
    from fourm21.api import save_pretrained as _save

    return _save(model, directory, report)


def push_to_hub(model, repo_id, private=None, token=None, report=None, commit_message="Upload fourm21 model"):
    """Upload a model (or a ``.ckpt``) to the Hugging Face Hub as ``hf://repo_id`` (``fourm21.hub``)."""
    from fourm21.api import push_to_hub as _push

    return _push(model, repo_id, private=private, token=token, report=report,
                 commit_message=commit_message)


def to_supervision(pred, model):
    """One image's predictions (an entry of ``model.predict(...)``) as ``supervision.Detections`` (``fourm21.api``)."""
    from fourm21.api import to_supervision as _to

    return _to(pred, model)
