"""Task modules: one per task kind (classification, detection, instance masks, semantic, attributes,
multi-label), each owning its head, loss, decoding, metrics and outputs. Importing the package registers the
built-in kinds; a task defined elsewhere registers itself when its module is imported (its head's
``_target_`` in the config does that)."""

from fourm21.tasks import attributes, classification, detection, instance, multilabel, semantic  # noqa: F401
from fourm21.tasks.base import ConfigKeys, Task
from fourm21.tasks.registry import (
    head_losses,
    override_keys,
    override_values,
    register,
    registered,
    task_for_class,
    task_for_config,
    tasks_of,
    tasks_of_config,
)

__all__ = ["ConfigKeys", "Task", "head_losses", "override_keys", "override_values", "register", "registered",
           "task_for_class", "task_for_config", "tasks_of", "tasks_of_config"]
