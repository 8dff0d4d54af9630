"""The app's command line, form and session without a browser: the seed's flag spellings and Hydra overrides set
the config and lock their controls; a locked control ignores what a client submits; a submitted form fails with
exactly the manifest's messages; a generation through the session is a batch item (mp4, sidecar, ledger line)
whose denoising steps reach the page's progress bar. Gradio is not imported here (the browser tests run it)."""
from __future__ import annotations

import json
import sys

import pytest

from wan_dist.batch.manifest import ManifestError, load_items
from wan_dist.models.registry import NATIVE_NEGATIVE_PROMPT, get_model
from wan_dist.ui import args
from wan_dist.ui.form import Form


def compose(argv):
    cl = args.parse(argv)
    return cl, args.compose(cl)


def test_seed_flags_and_overrides_set_the_config_and_lock_their_controls(tmp_path):
    cl, cfg = compose(["model=tiny-t2v-moe", f"ckpt_dir={tmp_path}", "--sample_shift", "10", "--sample_guide_scale",
                       "8", "--offload_model", "True", "--t5_cpu", "sample.steps=3", "--prompt", "a cat, on a=mat"])
    assert (cfg.sample.shift, cfg.sample.guide_scale, cfg.sample.steps) == (10.0, 8.0, 3)
    assert cfg.sample.guide_scale_high == 8.0        # MoE: the official float fills both experts' scales
    assert cfg.offload_model is True and cfg.t5_cpu is True and cfg.prompt == "a cat, on a=mat"
    form = Form(cfg, cl.given, cl.random_seed)
    locked = {n: c.locked for n, c in form.controls.items() if c.locked}
    assert locked == {"shift": "--sample_shift 10", "guide_scale": "--sample_guide_scale 8",
                      "guide_scale_high": "--sample_guide_scale 8", "offload_model": "--offload_model True",
                      "t5_cpu": "--t5_cpu", "steps": "sample.steps=3", "prompt": "--prompt a cat, on a=mat"}
    assert form.controls["shift"].value == 10.0 and form.controls["t5_cpu"].value is True
    free = form.controls["negative_prompt"]
    assert free.locked is None and free.value == NATIVE_NEGATIVE_PROMPT
    assert form.controls["seed"].value == -1 and not form.controls["seed"].locked
    # the seed's other spellings: `--t5_cpu false` turns it off, `--flag=value`, --task, --base_seed -1 (random)
    cl, cfg = compose(["--task", "tiny-t2v", f"--ckpt_dir={tmp_path}", "--t5_cpu", "false", "--offload_model=no",
                       "--base_seed", "-1", "--size", "48*32"])
    assert cfg.model.name == "tiny-t2v" and cfg.t5_cpu is False and cfg.offload_model is False
    assert cfg.sample.size == "48*32" and cl.random_seed
    form = Form(cfg, cl.given, cl.random_seed)
    assert form.controls["seed"].locked == "--base_seed -1" and form.controls["seed"].value == -1
    assert "guide_scale_high" not in form.controls and "image" not in form.controls   # single expert, text only
    assert form.controls["t5_cpu"].locked == "--t5_cpu false"
    cl, cfg = compose(["model=tiny-t2v", f"ckpt_dir={tmp_path}", "sample.seed=-1", "ui.lang=en"])
    assert cl.random_seed and cfg.sample.seed == 42 and cfg.ui.lang == "en"


@pytest.mark.parametrize("argv, message", [
    (["--sample_shift", "ten"], "--sample_shift='ten': must be a number (it sets sample.shift)"),
    (["--t5_cpu=maybe"], "--t5_cpu='maybe': must be one of yes, true"),
    (["--sample_steps"], "--sample_steps: needs a value (it sets sample.steps)"),
    (["--sample_shfit", "3"], "--sample_shfit: unknown flag"),
    (["--sample_shift", "3", "sample.shift=4"], "sample.shift: set twice on the command line (--sample_shift 3 and "
                                                "sample.shift=4)"),
    (["-m", "sample.steps=2,3"], "-m: the UI serves one configuration"),
    (["sample.stepz=3"], "sample.stepz: unknown config key; did you mean sample.steps"),
    (["manifest=p.csv"], "manifest='p.csv': the UI makes one video per request"),
    (["ui.lang=fr"], "ui.lang='fr': must be one of zh, en"),
    (["ui.port=70000"], "ui.port=70000: must be between 0 and 65535"),
    (["--base_seed", "-5"], "sample.seed=-5: must be between 0 and 2**63-1"),
])
def test_command_line_mistakes_name_the_flag_or_key(tmp_path, argv, message):
    with pytest.raises(ValueError) as e:
        compose(["model=tiny-t2v", f"ckpt_dir={tmp_path}", *argv])
    assert message in str(e.value)


def test_a_submitted_form_fails_with_the_manifest_messages(tmp_path):
    """The same bad values in a manifest row and in the form: the same problems (the manifest adds file:line)."""
    cl, cfg = compose(["model=tiny-t2v-moe", f"ckpt_dir={tmp_path}"])
    spec, form = get_model("tiny-t2v-moe"), Form(cfg, cl.given)
    cases = [{"prompt": "", "steps": 4},
             {"prompt": "a cat", "steps": 0},
             {"prompt": "a cat", "steps": 2.5},
             {"prompt": "a cat", "cfg_truncate_steps": 9},
             {"prompt": "a cat", "cfg_truncate_high_noise_steps": 12},
             {"prompt": "a cat", "size": "33*33"},
             {"prompt": "a cat", "guide_scale": 0.5},
             {"prompt": "a cat", "seed": -5},
             {"prompt": "a cat", "solver": "euler"}]
    for n, bad in enumerate(cases):
        values = {name: c.value for name, c in form.controls.items()} | bad
        with pytest.raises(ManifestError) as got:
            form.item(values)
        m = tmp_path / f"m{n}.jsonl"
        m.write_text(json.dumps(bad) + "\n")
        with pytest.raises(ManifestError) as want:
            load_items(m, cfg, spec)
        assert got.value.problems == [p.split(" ", 1)[1] for p in want.value.problems], bad
        assert str(got.value).startswith("1 problem in the request (nothing was run):")


def test_locked_controls_ignore_the_submission_and_minus_one_draws_a_seed(tmp_path):
    cl, cfg = compose(["model=tiny-t2v", f"ckpt_dir={tmp_path}", "--sample_shift", "10", "--t5_cpu",
                       "sample.seed=7"])
    form = Form(cfg, cl.given)
    values = {name: c.value for name, c in form.controls.items()} | {"prompt": "a cat", "shift": 3.0,
                                                                      "t5_cpu": False, "seed": 99, "steps": 3}
    req = form.item(values).request
    assert req.shift == 10.0 and req.seed == 7 and req.steps == 3 and req.negative_prompt == NATIVE_NEGATIVE_PROMPT
    assert form.placement(values) == {"offload_model": False, "t5_cpu": True}
    cl, cfg = compose(["model=tiny-t2v", f"ckpt_dir={tmp_path}"])
    form = Form(cfg, cl.given)
    values = {name: c.value for name, c in form.controls.items()} | {"prompt": "a cat"}
    seeds = {form.item(values).request.seed for _ in range(3)}
    assert len(seeds) == 3 and all(0 <= s < 2**63 for s in seeds)
    assert form.item(values | {"seed": 5.0}).request.seed == 5


def test_a_generation_through_the_session_is_a_batch_item_with_its_steps_relayed(tmp_path, tiny_ckpt, test_image):
    from wan_dist.batch.outputs import OutputDir
    from wan_dist.batch.preempt import StopFlag
    from wan_dist.distributed.context import RunContext
    from wan_dist.ui.page import outputs, relay
    from wan_dist.ui.session import Job, Session
    from wan_dist.ui.texts import texts
    out = tmp_path / "out"
    cl, cfg = compose(["model=tiny-ti2v", f"ckpt_dir={tiny_ckpt('tiny-ti2v')}", f"out_dir={out}", "device=cpu",
                       "sample.steps=2", "sample.frame_num=5", "sample.size=32*32", "batch.progress=false"])
    form = Form(cfg, cl.given)
    session = Session(cfg, RunContext(), StopFlag(), None, form)
    values = {name: c.value for name, c in form.controls.items()} | {"prompt": "a cat", "seed": 3,
                                                                      "image": str(test_image), "t5_cpu": True}
    job = Job(session.prepare(values))
    req = job.message["item"].request
    assert req.image == str(out / "inputs" / f"{req.id}.png")      # the upload is kept with the outputs
    job.finish(session.generate(job.message, job.step))            # what session.serve does on rank 0
    calls = []
    result = relay(job, lambda *a, **k: calls.append((a, k)), texts("en"))
    assert [a[0] for a, _ in calls] == [(1, 2), (2, 2)] and calls[0][1]["unit"] == "steps"
    assert result["status"] == "ok" and result["seed"] == 3
    video, seed, status, figures = outputs(result, texts("en"))
    assert video == str(out / "videos" / f"{req.id}.mp4") and seed == "3" and status.startswith("done:")
    assert "frames/s" in figures and "n/a (single model)" in figures
    o = OutputDir(out)
    assert o.is_complete(req.id, o.ledger.latest()[req.id])          # mp4 + sidecar + ledger line, as a batch
    sc = json.loads(o.path_for(req.id, ".json").read_text())
    assert sc["seed"] == 3 and sc["image"] == req.image and sc["run"]["t5_device"] == "cpu"
    assert sc["layout"]["source"] == "ui" and sc["timings"]["model_load"] > 0
    session.close()
    assert json.loads((out / "results.jsonl").read_text().splitlines()[0])["id"] == req.id
    assert not any((out / ".partial").rglob("*.*"))
    assert "gradio" not in sys.modules                              # the app imports it, never the batch path


def test_port_taken_and_loopback_rules():
    import socket

    from wan_dist.ui.main import is_loopback, pick_port
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        with pytest.raises(ValueError, match=rf"ui.host='127.0.0.1', ui.port={port}: cannot listen there"):
            pick_port("127.0.0.1", port)
    assert pick_port("127.0.0.1", 0) > 0
    assert is_loopback("127.0.0.1") and is_loopback("localhost") and is_loopback("::1")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.5") and not is_loopback("example.org")
    assert all(flag in args.usage() for flag in args.ALIASES)
