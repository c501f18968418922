"""Bit-identity check for refactors of the task machinery: every loss part, decoded output, per-image prediction
and pseudo-target tensor of three fixed cases (the default heads; a batch where half the images carry no target;
all six heads), captured from one version of the code and compared with another by ``torch.equal``.

    git worktree add /tmp/old 877490f
    (cd /tmp/old && PYTHONPATH=/tmp/old $REPO/.venv/bin/python $REPO/scripts/check_task_parity.py capture /tmp/old.pt)
    .venv/bin/python scripts/check_task_parity.py capture /tmp/new.pt                       # this checkout
    .venv/bin/python scripts/check_task_parity.py compare /tmp/old.pt /tmp/new.pt           # IDENTICAL, or the diffs

Run the old capture from inside the old checkout (with it on ``PYTHONPATH``): a package installed in editable
mode would otherwise lend it modules of this checkout. The repository's ``tests`` package is appended to the
path, so the old checkout's package and test config (``tests.conftest.model_config``) are the ones captured.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.append(str(Path(__file__).resolve().parents[1]))

from tests.conftest import model_config  # noqa: E402


def samples(seed: int, partial: bool) -> list[dict]:
    """Four seeded 64-px samples with every target (``partial``: only every other one carries targets)."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(4):
        s = {"image": torch.randint(0, 255, (3, 64, 64), generator=g, dtype=torch.uint8),
             "meta": {"image_id": i + 1, "orig_size": (64, 64), "scale": 1.0, "pad": (0, 0)}}
        if not partial or i % 2 == 0:
            s["label"] = int(torch.randint(0, 4, (1,), generator=g))
            n = 1 + i % 3
            xy = torch.rand(n, 2, generator=g) * 30
            wh = 8 + torch.rand(n, 2, generator=g) * 24
            s["boxes"] = torch.cat([xy, xy + wh], 1)
            s["box_labels"] = torch.randint(0, 3, (n,), generator=g)
            m = torch.zeros(n, 64, 64, dtype=torch.bool)
            for k, b in enumerate(s["boxes"].long()):
                m[k, b[1]:b[3], b[0]:b[2]] = True
            s["masks"] = m
            sem = torch.zeros(64, 64, dtype=torch.uint8)
            for k, b in enumerate(s["boxes"].long()):
                sem[b[1]:b[3], b[0]:b[2]] = int(s["box_labels"][k]) + 1
            s["semantic"] = sem
            s["attributes"] = {"colour": int(torch.randint(0, 3, (1,), generator=g)), "size": -1 if i == 2 else 1}
            s["labels"] = (torch.rand(5, generator=g) > 0.5).float()
            s["caption_tokens"] = torch.randint(1, 100, (6,), generator=g)
        out.append(s)
    return out

CASES = {
  "default": (dict(), False),
  "partial": (dict(), True),
  "all6": ({"heads.attr.enabled": True, "heads.attr.groups": {"colour": 3, "size": 2},
            "heads.mlc.enabled": True, "heads.mlc.num_classes": 5, "heads.det.score_thr": 0.0}, False),
}

def run() -> dict:
    """Every tensor of the fixed cases, under the version of fourm21 on the path (before or after the task
    modules: the loss loop and the pseudo-labels moved)."""
    from fourm21.data.collate import collate_samples
    from fourm21.inference.decode import DecodeSettings, decode, decode_batch
    from fourm21.models.multitask import build_model
    try:
        from fourm21.tasks import head_losses
        with_settings = True  # pseudo_targets takes the teacher's DecodeSettings
    except ImportError:
        from fourm21.losses.heads import head_losses
        with_settings = False
    res = {}
    for name, (over, partial) in CASES.items():
        torch.manual_seed(0)
        cfg = model_config(**over)
        net = build_model(cfg)
        batch = collate_samples(samples(1, partial))
        net.train()
        torch.manual_seed(1)
        out = net(batch["image"], batch["caption_tokens"])
        losses = head_losses(net, out, batch)
        res[f"{name}/losses"] = {t: {k: v.detach() for k, v in p.items()} for t, p in losses.items()}
        net.eval()
        with torch.no_grad():
            out = net(batch["image"], batch["caption_tokens"])
            s = DecodeSettings.from_net(net)
            d = decode_batch(out, (64, 64), s)
            res[f"{name}/decoded"] = {k: v.clone() for k, v in d.items()}
            preds = decode(out, (64, 64), s)
            res[f"{name}/preds"] = [{k: v.clone() for k, v in p.items()} for p in preds]
            if with_settings:
                from fourm21.training.pseudo_labels import pseudo_targets
            else:  # before the task modules
                from fourm21.engine.pseudo_labels import pseudo_targets
            ub = collate_samples([{"image": x["image"], "meta": x["meta"]} for x in samples(2, False)])
            o2 = net(ub["image"])
            p2 = decode(o2, (64, 64), s)
            thresholds = {"cls": 0.1, "det": 0.05, "sem": 0.2, "attr": 0.2, "mlc": 0.5}
            pt = pseudo_targets(o2, p2, dict(ub), thresholds, *([s] if with_settings else []))
            res[f"{name}/pseudo"] = {k: v for k, v in pt.items() if k not in ("meta",)}
    return res



def differences(a, b, path: str = "") -> list[str]:
    """Where two captures differ (keys, lengths, tensors not ``torch.equal``, values)."""
    if isinstance(a, dict):
        out = [f"{path}: keys {sorted(set(a) ^ set(b))}"] if set(a) != set(b) else []
        return out + [d for k in sorted(set(a) & set(b), key=str) for d in differences(a[k], b[k], f"{path}/{k}")]
    if isinstance(a, list):
        if len(a) != len(b):
            return [f"{path}: {len(a)} vs {len(b)} items"]
        return [d for i, (u, v) in enumerate(zip(a, b)) for d in differences(u, v, f"{path}[{i}]")]
    if isinstance(a, torch.Tensor):
        same = isinstance(b, torch.Tensor) and a.shape == b.shape and a.dtype == b.dtype and torch.equal(a, b)
        return [] if same else [f"{path}: differs"]
    return [] if a == b else [f"{path}: {a!r} vs {b!r}"]


def main(argv: list[str]) -> int:
    if len(argv) == 2 and argv[0] == "capture":
        torch.set_num_threads(1)
        torch.save(run(), argv[1])
        return 0
    if len(argv) == 3 and argv[0] == "compare":
        diffs = differences(torch.load(argv[1], weights_only=False), torch.load(argv[2], weights_only=False))
        print("IDENTICAL" if not diffs else "\n".join(diffs[:40]))
        return 1 if diffs else 0
    print(__doc__)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
