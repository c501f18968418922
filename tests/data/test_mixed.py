import pytest

from fourm21.data.mixed import RatioBatchSampler
from fourm21.errors import ConfigError


def test_batches_come_from_one_data_set_by_ratio():
    sampler = RatioBatchSampler([100, 40], [0.75, 0.25], [10, 4], num_batches=400, seed=0)
    batches = list(sampler)
    assert len(batches) == len(sampler) == 400
    first = [b for b in batches if b[0] < 100]
    second = [b for b in batches if b[0] >= 100]
    assert all(len(b) == 10 and max(b) < 100 for b in first)
    assert all(len(b) == 4 and min(b) >= 100 and max(b) < 140 for b in second)
    assert 0.68 < len(first) / 400 < 0.82
    assert list(sampler) != batches  # a new order each epoch


def test_default_epoch_length_and_bad_ratios():
    assert len(RatioBatchSampler([100, 40], [0.5, 0.5], [10, 4])) == 20
    with pytest.raises(ConfigError, match="data.ratios"):
        RatioBatchSampler([10, 10], [0, 0], [2, 2])
