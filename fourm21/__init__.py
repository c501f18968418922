"""fourm21: one vision network for classification, detection and segmentation.

    import fourm21
    model = fourm21.load("runs/train/.../checkpoints/best.ckpt")   # or an exported directory
    preds = model.predict(["photo.jpg"])                             # plain dicts of tensors per image
"""

__version__ = "0.1.0"


def load(path, device="cpu"):
    """Load a ``.ckpt`` or an exported safetensors directory for inference (see ``fourm21.api``)."""
    from fourm21.api import load as _load

    return _load(path, device)
