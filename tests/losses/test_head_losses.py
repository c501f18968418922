"""The per-head loss functions (fourm21/losses/heads.py): dependency order and the dispatch by head kind."""

import pytest

from fourm21.errors import ConfigError
from fourm21.losses.heads import HEAD_LOSSES, head_loss, loss_order
from fourm21.models.heads.base import Head


def _head(kind: str, key: str, requires: tuple[str, ...] = ()) -> Head:
    """A head of class ``name`` ``kind``, under ``key`` (build_model names each head by its config key)."""
    head = type(f"{kind.title()}Head", (Head,), {"name": kind, "requires": requires})()
    head.name = key
    return head


def test_every_head_follows_those_it_requires():
    heads = {"inst": _head("inst", "inst", ("det",)), "cls": _head("cls", "cls"), "det": _head("det", "det")}
    assert loss_order(heads) == ["det", "inst", "cls"]


def test_a_head_kind_without_a_loss_names_its_key():
    assert set(HEAD_LOSSES) == {"cls", "det", "inst", "sem", "attr", "mlc"}
    with pytest.raises(ConfigError, match="model.heads.depth: no loss for head kind 'depth'"):
        head_loss(_head("depth", "depth"), {}, {}, {})
