"""Layout rules (wan_dist.distributed.layout), checked before init_process_group: each a ValueError naming the
field, the value and the rule. Pure Python: no processes needed."""
from __future__ import annotations

import pytest

from wan_dist import config as config_mod
from wan_dist.distributed.layout import check_layout, nearest_fitting_size, resolve_layout
from wan_dist.models.registry import get_model


def cfg(*extra, model="tiny-t2v"):
    return config_mod.compose([f"model={model}", "ckpt_dir=/nonexistent", "prompt=a cat", *extra])


def test_dp_minus_one_takes_what_is_left():
    assert resolve_layout(cfg("parallel.ulysses=2"), 4).dp == 2
    assert resolve_layout(cfg(), 2).dp == 2
    assert resolve_layout(cfg("parallel.cfg=2", "parallel.ulysses=2"), 8).replica_size == 4


@pytest.mark.parametrize("extra, world, needle", [
    (["parallel.dp=3"], 2, "parallel.dp=3: dp x cfg x ulysses x ring = 3 x 1 x 1 x 1 = 3 must equal the world size 2"),
    (["parallel.ulysses=2"], 3, "parallel.dp=-1: world size 3 is not divisible"),
    (["parallel.ring=2", "device=cpu", "attention_backend=native"], 2,
     "attention_backend='native': parallel.ring=2 merges partial attention with the log-sum-exp"),
    (["parallel.cfg=2", "sample.guide_scale=1.0"], 2, "parallel.cfg=2: CFG-parallel needs guidance on"),
    (["parallel.fsdp=true"], 2, "parallel.fsdp=true: a replica of 1 rank has nothing to shard"),
    (["parallel.fsdp=true"], 1, "e.g. parallel.ulysses=2"),
    (["parallel.fsdp=true", "parallel.dp=1"], 2, "FSDP shards over the ranks of one replica (cfg x ulysses x "
     "ring), never over dp: to shard over all 2 ranks make them one replica, e.g. parallel.dp=-1 parallel.ulysses=2"),
    (["parallel.ulysses=2", "sample.size=48*16", "sample.frame_num=9"], 2,
     "sample.size=48*16: 9 tokens (9 frames) must be divisible by ulysses x ring = 2"),
])
def test_layout_errors(extra, world, needle):
    with pytest.raises(ValueError) as e:
        check_layout(cfg(*extra), world)
    assert needle in str(e.value)


def test_heads_must_divide_by_ulysses():
    with pytest.raises(ValueError, match=r"parallel.ulysses=4: must divide the head count of tiny-t2v \(2\)"):
        cfg("parallel.ulysses=4")


def test_token_error_proposes_a_size_that_fits():
    with pytest.raises(ValueError, match=r"nearest size that fits: (\d+)\*(\d+)") as e:
        check_layout(cfg("parallel.ulysses=2", "sample.size=48*16", "sample.frame_num=9"), 2)
    import re
    w, h = map(int, re.search(r"fits: (\d+)\*(\d+)", str(e.value)).groups())
    from wan_dist.pipeline.sizes import token_count
    assert token_count(get_model("tiny-t2v"), 9, w, h) % 2 == 0
    # official sizes only for real models: t2v-14B at 1280*720, 81 frames, ulysses 8: 21*45*80 tokens
    spec = get_model("t2v-14B")
    assert nearest_fitting_size(spec, 81, 1280, 720, 8, cfg(model="t2v-14B").model.sizes) is not None


def test_cfg_two_with_moe_high_guidance_only_is_allowed():
    check_layout(cfg("parallel.cfg=2", "sample.guide_scale=1.0", "sample.guide_scale_high=3.0",
                     model="tiny-t2v-moe"), 2)


def test_good_layouts_pass():
    for extra in (["parallel.ulysses=2"], ["parallel.cfg=2"], ["parallel.fsdp=true", "parallel.ulysses=2"], []):
        assert check_layout(cfg(*extra), 2).dp * check_layout(cfg(*extra), 2).replica_size == 2
