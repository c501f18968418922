"""Label formats of other tools, converted once into the COCO layout that ``fourm21.data.coco`` reads.

One reader per format (``yolo``, ``voc``, ``labelme``) turns the tool's files into a ``Source``
(``records``); ``to_coco.convert`` writes it as ``<out>/{train,val}2017/`` and
``<out>/annotations/instances_*2017.json``, so ``experiment=coco data.root=<out>`` trains on it with
the checked COCO reader. The command is ``fourm21-convert`` (``fourm21.engine.convert``); the data configs
``data=yolo`` and ``data=voc`` convert on the fly into a cache instead (``cached``).
"""

from fourm21.data.formats.to_coco import READERS, convert

__all__ = ["READERS", "convert"]
