"""The HTTP service behind ``fourm21-serve``: ``create_app(model, settings)`` is a FastAPI app whose
``POST /predict`` answers with the JSON ``fourm21-predict`` writes, micro-batching concurrent requests."""
