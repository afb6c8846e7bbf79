import numpy as np
import torch

from fertool.data.datasets import ArraySplit, ReferenceSplit, batch_indices, iter_split

from .conftest import load_reference


def test_array_split_grey_is_replicated_and_order_kept():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(10, 8, 8), dtype=np.uint8)
    split = ArraySplit(images=images, labels=torch.arange(10) % 7)
    idx = torch.tensor([7, 2, 9, 2])
    x = split.load(idx)
    assert x.shape == (4, 3, 8, 8) and x.dtype == torch.float32
    for b, i in enumerate(idx.tolist()):
        for c in range(3):
            assert torch.equal(x[b, c], torch.from_numpy(images[i]).float())


def test_array_split_rgb_channels_in_order():
    images = np.zeros((2, 4, 4, 3), dtype=np.uint8)
    images[..., 0], images[..., 1], images[..., 2] = 10, 20, 30
    x = ArraySplit(images=images, labels=torch.zeros(2, dtype=torch.long)).load(torch.tensor([1]))
    assert x[0, :, 0, 0].tolist() == [10.0, 20.0, 30.0]


def test_reference_split_is_float_resize_without_floor():
    ref = load_reference("prepare_resize.npz")
    split = ReferenceSplit(images=ref["src"], labels=torch.zeros(8, dtype=torch.long), size=224)
    x = split.load(torch.arange(8))
    assert np.array_equal(x[:, 0].numpy(), ref["resized_float"])  # bit for bit, not floored
    assert torch.equal(x[:, 0], x[:, 2])


def test_batch_indices_cover_each_index_once_and_shard():
    gen = torch.Generator().manual_seed(0)
    seen = torch.cat(list(batch_indices(23, 5, shuffle=True, generator=gen)))
    assert sorted(seen.tolist()) == list(range(23))
    shards = [torch.cat(list(batch_indices(23, 4, rank=r, world_size=2))) for r in range(2)]
    assert len(shards[0]) == len(shards[1]) == 12  # padded to equal steps
    assert set(shards[0].tolist()) | set(shards[1].tolist()) == set(range(23))
    assert len(list(batch_indices(23, 5, drop_last=True))) == 4


def test_iter_split_yields_labels_matching_indices():
    split = ArraySplit(images=np.zeros((6, 4, 4), np.uint8), labels=torch.tensor([0, 1, 2, 3, 4, 5]))
    for _x, y, idx in iter_split(split, 4, shuffle=True, generator=torch.Generator().manual_seed(1)):
        assert torch.equal(y, idx)
