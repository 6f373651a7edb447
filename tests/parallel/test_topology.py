import pytest

from launcher.config import ModelConfig
from parallel.topology import Topology, TopologyError


def test_groups_tp_innermost():
    t = Topology(world_size=8, rank=5, tp=2)
    assert (t.tp, t.dp, t.tp_rank, t.dp_rank, t.pp_rank) == (2, 4, 1, 2, 0)
    assert t.tp_ranks() == [4, 5]
    assert t.dp_ranks() == [1, 3, 5, 7]
    assert t.all_tp_groups() == [[0, 1], [2, 3], [4, 5], [6, 7]]
    assert t.all_dp_groups() == [[0, 2, 4, 6], [1, 3, 5, 7]]


def test_every_rank_in_exactly_one_group_of_each_kind():
    for world, tp in [(16, 8), (1024, 8), (12, 4), (6, 1), (4, 4)]:
        ranks = [Topology(world, r, tp) for r in range(world)]
        for kind in ("tp_ranks", "dp_ranks"):
            groups = {tuple(getattr(t, kind)()) for t in ranks}
            flat = sorted(r for g in groups for r in g)
            assert flat == list(range(world))
        for t in ranks:
            assert t.global_rank(t.tp_rank, t.dp_rank) == t.rank


def test_tp_group_stays_inside_a_node():
    gpus_per_node = 8
    for r in range(0, 1024, 37):
        t = Topology(1024, r, tp=8)
        assert len({x // gpus_per_node for x in t.tp_ranks()}) == 1


def test_mpu_interface():
    t = Topology(world_size=4, rank=3, tp=2)
    assert t.get_tensor_model_parallel_rank() == t.get_model_parallel_rank() == 1
    assert t.get_tensor_model_parallel_world_size() == t.get_model_parallel_world_size() == 2
    assert t.get_data_parallel_rank() == 1 and t.get_data_parallel_world_size() == 2
    assert t.get_data_parallel_group_ranks() == [1, 3]
    assert t.get_pipeline_model_parallel_world_size() == 1
    # DeepSpeed reads a None group as "the whole world": refuse instead of returning None.
    with pytest.raises(TopologyError, match="init_groups"):
        t.get_data_parallel_group()
    with pytest.raises(TopologyError, match="init_groups"):
        t.get_model_parallel_group()
    assert Topology.single().tp_group is None  # tp == 1 needs no group


@pytest.mark.parametrize("kwargs, words", [
    (dict(world_size=6, rank=0, tp=4), ["parallel.tp=4", "world size 6", "rule"]),
    (dict(world_size=4, rank=4, tp=2), ["rank=4", "rule"]),
    (dict(world_size=4, rank=0, tp=0), ["parallel.tp=0", "positive"]),
    (dict(world_size=4, rank=0, tp=2, pp=2), ["parallel.pp=2", "rule"]),
])
def test_bad_layouts_refused(kwargs, words):
    with pytest.raises(TopologyError) as e:
        Topology(**kwargs)
    for w in words:
        assert w in str(e.value)


@pytest.mark.parametrize("shape, words", [
    (dict(d_model=60, n_head=6, vocab_size=512), ["parallel.tp=4", "model.n_head=6", "heads"]),
    (dict(d_model=64, n_head=4, vocab_size=510), ["parallel.tp=4", "model.vocab_size=510", "pad"]),
    (dict(d_model=64, n_head=4, vocab_size=512, d_ff=130), ["parallel.tp=4", "model.d_ff=130"]),
])
def test_model_shapes_tp_cannot_split_are_refused(shape, words):
    with pytest.raises(TopologyError) as e:
        Topology(8, 0, tp=4).check_model(ModelConfig(**shape))
    for w in words:
        assert w in str(e.value)
