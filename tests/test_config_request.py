"""Config composition, request resolution, frame counts and sizes."""
from pathlib import Path

import pytest
import yaml

from wan_dist.config import compose
from wan_dist.models.registry import MODELS, NATIVE_NEGATIVE_PROMPT
from wan_dist.pipeline.request import build_request, derive_seed
from wan_dist.pipeline.sizes import check_size, correct_frame_num, parse_size

REPO = Path(__file__).resolve().parents[1]
BASE = ["ckpt_dir=/nonexistent", "prompt=a cat"]


SIZES_14B = ["720*1280", "1280*720", "480*832", "832*480"]
# the native sampling defaults (shared/reference/wan_facts.md §1.2; tiny models: the project's own choice):
# name: steps, shift, guide (low, high), boundary, fps, frames, size, sizes
NATIVE = {
    "t2v-1.3B": (50, 5.0, (5.0, None), None, 16, 81, "832*480", ["480*832", "832*480"]),
    "t2v-14B": (50, 5.0, (5.0, None), None, 16, 81, "1280*720", SIZES_14B),
    "ti2v-5B": (50, 5.0, (5.0, None), None, 24, 121, "1280*704", ["1280*704", "704*1280"]),
    "t2v-A14B": (40, 12.0, (3.0, 4.0), 0.875, 16, 81, "1280*720", SIZES_14B),
    "i2v-A14B": (40, 5.0, (3.5, 3.5), 0.9, 16, 81, "1280*720", SIZES_14B),
    "tiny-t2v": (8, 5.0, (5.0, None), None, 16, 17, "64*64", []),
    "tiny-ti2v": (8, 5.0, (5.0, None), None, 24, 17, "64*64", []),
    "tiny-t2v-moe": (10, 12.0, (3.0, 4.0), 0.875, 16, 17, "64*64", []),
    "tiny-i2v-moe": (10, 5.0, (3.5, 3.5), 0.9, 16, 17, "64*64", []),
}


@pytest.mark.parametrize("name", list(MODELS))
def test_model_yaml_holds_the_native_defaults(name):
    steps, shift, (g, gh), boundary, fps, frames, size, sizes = NATIVE[name]
    y = yaml.safe_load((REPO / "conf" / "model" / f"{name}.yaml").read_text())
    assert (y["name"], y["steps"], y["shift"], y["guide_scale"], y["guide_scale_high"]) == (name, steps, shift, g, gh)
    assert (y["boundary"], y["fps"], y["frame_num"], y["size"], y["sizes"]) == (boundary, fps, frames, size, sizes)
    assert MODELS[name].is_moe == (boundary is not None)


def test_sampling_defaults_have_one_owner():
    """conf/model/*.yaml owns steps, shift, guidance, boundary, fps, frames and sizes; the registry only structure."""
    import dataclasses
    fields = {f.name for f in dataclasses.fields(next(iter(MODELS.values())))}
    assert not fields & {"sample_steps", "sample_shift", "guide_scale", "boundary", "fps", "frame_num", "sizes",
                         "default_size"}, fields


def test_compose_defaults_and_overrides():
    cfg = compose(BASE + ["model=t2v-A14B", "sample.steps=20", "parallel.ulysses=4"])
    assert cfg.model.name == "t2v-A14B" and cfg.model.guide_scale_high == 4.0 and cfg.sample.steps == 20
    assert cfg.parallel.ulysses == 4 and cfg.sample.solver == "unipc"


@pytest.mark.parametrize("overrides,needle", [
    (["sample.stepz=3"], "stepz"),
    (["+foo=1"], "foo=1: unknown key"),
    (["sample.steps=abc"], "sample.steps='abc': must be an integer"),
    (["sample.steps=0"], "sample.steps=0: must be >= 1"),
    (["sample.solver=euler"], "sample.solver='euler': must be one of unipc, dpm++"),
    (["sample.shift=-1"], "sample.shift=-1.0: must be > 0"),
    (["sample.guide_scale=0.5"], "sample.guide_scale=0.5: must be >= 1.0"),
    (["sample.cfg_truncate_steps=-1"], "sample.cfg_truncate_steps=-1: must be >= 0"),
    (["parallel.cfg=3"], "parallel.cfg=3: must be 1 or 2"),
    (["parallel.ulysses=3"], "parallel.ulysses=3: must divide the head count"),
    (["logger=nonexistent"], "logger"),
    (["model=t2v-99B"], "t2v-99B"),
    (["device=tpu"], "device='tpu': must be one of"),
    (["output.frames=jpg"], "output.frames='jpg'"),
])
def test_config_errors_name_field_value_rule(overrides, needle):
    with pytest.raises(ValueError) as e:
        compose(BASE + overrides)
    assert needle in str(e.value)


def test_manifest_or_prompt_required():
    with pytest.raises(ValueError, match="manifest=null, prompt=null"):
        compose(["ckpt_dir=/x"])


@pytest.mark.parametrize("n,expected,warns", [
    (1, 5, True), (2, 5, True), (3, 5, True), (4, 5, True), (5, 5, False), (6, 5, True), (7, 9, True),
    (8, 9, True), (9, 9, False), (80, 81, True), (81, 81, False), (82, 81, True), (83, 85, True),
    (120, 121, True), (121, 121, False)])
def test_frame_count_table(n, expected, warns):
    fixed, warning = correct_frame_num(n)
    assert fixed == expected and (warning is not None) == warns


def test_size_rules():
    assert parse_size("1280*704") == (1280, 704) and parse_size("832x480") == (832, 480)
    with pytest.raises(ValueError, match=r"size='1280-720': must be W\*H"):
        parse_size("1280-720")
    with pytest.raises(ValueError) as e:
        check_size(MODELS["ti2v-5B"], (1280, 720), sizes=NATIVE["ti2v-5B"][-1])
    assert "1280*704" in str(e.value) and "704*1280" in str(e.value) and "1280*720" in str(e.value)
    check_size(MODELS["t2v-A14B"], (832, 480), sizes=SIZES_14B)
    with pytest.raises(ValueError, match="480\\*480: not a size t2v-1.3B supports; valid sizes: 480\\*832, 832\\*480"):
        check_size(MODELS["t2v-1.3B"], (480, 480), sizes=NATIVE["t2v-1.3B"][-1])
    with pytest.raises(ValueError, match="multiples of 32.*nearest valid size: 64\\*96"):
        check_size(MODELS["tiny-ti2v"], (64, 80))
    check_size(MODELS["tiny-t2v"], (48, 80))


def _req(overrides, row, model="tiny-t2v-moe"):
    cfg = compose(BASE + [f"model={model}"] + overrides)
    return build_request(cfg, MODELS[model], {"prompt": "a cat", **row}, "id1")


def test_request_precedence_and_defaults():
    r = _req(["sample.steps=6"], {"steps": 4})
    assert r.steps == 4 and r.negative_prompt == NATIVE_NEGATIVE_PROMPT and r.guide_scale == 3.0
    assert r.guide_scale_high == 4.0 and r.seed == derive_seed(42, "id1")
    r = _req(["sample.steps=6"], {})
    assert r.steps == 6
    # an empty negative prompt means "the default", as in the native code (n_prompt="" -> sample_neg_prompt)
    assert _req([], {"seed": 5, "negative_prompt": ""}).negative_prompt == NATIVE_NEGATIVE_PROMPT
    assert _req([], {"negative_prompt": "blurry"}).negative_prompt == "blurry"


@pytest.mark.parametrize("row,needle", [
    ({"cfg_truncate_steps": 99}, "cfg_truncate_steps=99: must be between 0 and"),
    ({"cfg_truncate_high_noise_steps": 99}, "cfg_truncate_high_noise_steps=99: must be between 0 and"),
    ({"size": "100*100"}, "multiples of 16"),
    ({"image": "x.png"}, "takes no image"),
    ({"frame_num": 0}, "frame_num=0"),
])
def test_request_errors(row, needle):
    with pytest.raises(ValueError, match=needle.replace("*", "\\*")):
        _req([], row)


def test_single_expert_has_no_high_noise_truncation():
    with pytest.raises(ValueError, match="cfg_truncate_high_noise_steps=1: must be between 0 and 0"):
        _req([], {"cfg_truncate_high_noise_steps": 1}, model="tiny-t2v")
    with pytest.raises(ValueError, match="guide_scale_high=4.0: tiny-t2v has a single expert"):
        _req([], {"guide_scale_high": 4.0}, model="tiny-t2v")


def test_i2v_needs_image():
    with pytest.raises(ValueError, match="needs a conditioning image"):
        _req([], {}, model="tiny-i2v-moe")
