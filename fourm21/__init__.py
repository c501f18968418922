"""fourm21: one vision network for classification, detection and segmentation.

    import fourm21
    model = fourm21.load("runs/train/.../checkpoints/best.ckpt")   # or an exported directory
    preds = model.predict(["photo.jpg"])                             # plain dicts of tensors per image
"""

import os

__version__ = "0.1.0"

# albumentations asks PyPI for a newer version whenever it is imported (a network call of up to 2 s at every
# CLI start, and a failed one offline); the user's own setting wins.
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")


def load(path, device="cpu"):
    """Load a ``.ckpt`` or an exported safetensors directory for inference (see ``fourm21.api``)."""
    from fourm21.api import load as _load

    return _load(path, device)
