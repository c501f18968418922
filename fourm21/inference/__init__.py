"""From raw head outputs to predictions a user reads, for every way a trained model can run.

``decode`` (one decoder per head, batched, traceable), ``letterbox`` / ``masks`` (back to the original
image), ``preprocess`` (the val pipeline), ``runners`` (PyTorch, ONNX Runtime, .pt2), ``checkpoints`` and
``loading`` (every kind of checkpoint or export), ``model`` (``Fourm21Model``, what ``fourm21.load`` gives).
"""
