"""grain loaders: per-process shards, seeded shuffling, resumable position, one exact pass for evaluation."""

import itertools

import numpy as np
import pytest
from toy_training import ToySource

from data_pipelines.loader import MASK, iterate_once, make_iterator


def indices(batches):
    return [int(index) for batch in batches for index in batch["index"]]


def first_batches(iterator, count):
    return list(itertools.islice(iterator, count))


def test_process_shards_are_disjoint_and_cover_the_data():
    source = ToySource(size=23)
    shards = [indices(make_iterator(source, batch_size=4, seed=0, num_epochs=1, shard_index=i, shard_count=3,
                                    drop_remainder=False)) for i in range(3)]
    assert sorted(len(shard) for shard in shards) == [7, 8, 8]
    assert sorted(itertools.chain(*shards)) == list(range(23))


def test_shuffle_is_reproducible_differs_by_seed_and_reshuffles_each_epoch():
    source = ToySource(size=16)
    seen = indices(first_batches(make_iterator(source, batch_size=8, seed=0), 4))  # two epochs
    assert seen == indices(first_batches(make_iterator(source, batch_size=8, seed=0), 4))
    assert seen != indices(first_batches(make_iterator(source, batch_size=8, seed=1), 4))
    first_epoch, second_epoch = seen[:16], seen[16:]
    assert sorted(first_epoch) == sorted(second_epoch) == list(range(16))
    assert first_epoch != second_epoch and first_epoch != list(range(16))


def test_without_shuffle_the_order_is_the_source_order():
    assert indices(first_batches(make_iterator(ToySource(size=8), batch_size=4, seed=0, shuffle=False), 2)) == \
        list(range(8))


def test_a_restored_iterator_state_resumes_at_the_same_batch():
    source = ToySource(size=20)
    iterator = make_iterator(source, batch_size=6, seed=3)
    first_batches(iterator, 4)  # past the first epoch's end
    state = iterator.get_state()
    expected = first_batches(iterator, 3)
    restored = make_iterator(source, batch_size=6, seed=3)
    restored.set_state(state)
    assert indices(first_batches(restored, 3)) == indices(expected)


def test_the_transform_is_applied_to_every_example():
    double_label = lambda example: {**example, "label": example["label"] * 2}  # noqa: E731
    batch = next(make_iterator(ToySource(size=8), batch_size=8, seed=0, transform=double_label))
    np.testing.assert_array_equal(batch["label"], ToySource(size=8).labels[batch["index"]] * 2)


@pytest.mark.slow  # worker processes
def test_worker_processes_yield_the_same_batches():
    source = ToySource(size=16)
    in_process = first_batches(make_iterator(source, batch_size=4, seed=0), 3)
    with_worker = first_batches(make_iterator(source, batch_size=4, seed=0, worker_count=1), 3)
    assert indices(with_worker) == indices(in_process)


def test_iterate_once_covers_every_example_once_in_equal_batches_on_every_process():
    source = ToySource(size=23)
    shards = [list(iterate_once(source, 5, shard_index=i, shard_count=2)) for i in range(2)]
    assert [len(batches) for batches in shards] == [3, 3]  # 12 and 11 examples, padded to 15 each
    assert all(batch["image"].shape[0] == 5 and batch[MASK].dtype == bool for batch in itertools.chain(*shards))
    real = [int(i) for batch in itertools.chain(*shards) for i, keep in zip(batch["index"], batch[MASK]) if keep]
    assert sorted(real) == list(range(23))
    assert [int(batch[MASK].sum()) for batch in shards[1]] == [5, 5, 1]
    assert real[:12] == list(range(0, 23, 2))  # unshuffled


def test_iterate_once_refuses_examples_that_already_have_a_mask():
    class Masked(ToySource):
        def __getitem__(self, index):
            return {**super().__getitem__(index), MASK: np.True_}

    with pytest.raises(ValueError, match="already hold a 'mask' field"):
        list(iterate_once(Masked(size=4), 2, shard_index=0, shard_count=1))


def test_bad_shard_or_batch_size_is_rejected():
    with pytest.raises(ValueError, match=r"shard_index 2 must lie in \[0, shard_count=2\)"):
        make_iterator(ToySource(), batch_size=2, seed=0, shard_index=2, shard_count=2)
    with pytest.raises(ValueError, match="batch_size must be a positive"):
        iterate_once(ToySource(), 0)
