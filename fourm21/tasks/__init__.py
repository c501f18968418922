"""Task modules: one per task kind (classification, detection, instance masks, semantic, attributes,
multi-label), each owning its head, loss, decoding, metrics and outputs. Importing the package imports every
module in it, so a new file here registers its task; a task defined elsewhere registers itself when its module
is imported (its head's ``_target_`` in the config does that)."""

import importlib
import pkgutil

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

for _module in pkgutil.iter_modules(__path__):  # every task module of the package registers its task
    importlib.import_module(f"{__name__}.{_module.name}")

__all__ = ["ConfigKeys", "Task", "head_losses", "override_keys", "override_values", "register", "registered",
           "task_for_class", "task_for_config", "tasks_of", "tasks_of_config"]
