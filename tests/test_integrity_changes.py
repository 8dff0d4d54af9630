"""Batch integrity (issue 12), class 6: a rerun whose settings for an id differ never skips it silently.

One base run (module fixture: ids a, b ok with output.save_latents=true, c failed through the NaN test hook) is
copied for each test. Default batch.on_change=stop: exit 2 before any model work, the ids and the changed fields
listed, nothing written. redo makes them again (old files replaced, stale extras removed), keep keeps them and says
so. Settings that do not change the video (layout, progress, work source, offloading) are not a change."""
from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
from integrity_util import ok_records, overrides, run, sidecar, snapshot

from wan_dist.batch.ledger import Ledger
from wan_dist.models.tiny import write_tiny_checkpoint

MANIFEST = "id,prompt\na,a cat\nb,a dog\nc,a bird\n"


@pytest.fixture(scope="module")
def base(tiny_ckpt, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("changes-base")
    (root / "m.csv").write_text(MANIFEST)
    out = root / "out"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("WAN_DIST_TEST_INJECT_NAN", "c")
        rc, _, _ = run(overrides(tiny_ckpt("tiny-t2v"), out, root / "m.csv", "output.save_latents=true"), _NoCap())
    assert rc == 3
    assert sorted(r["id"] for r in ok_records(out)) == ["a", "b"]
    return root


class _NoCap:
    """Stands in for capsys in the module fixture (whose output is not checked)."""
    def readouterr(self):
        return type("R", (), {"err": ""})()


@pytest.fixture
def used(base, tmp_path) -> tuple[Path, Path]:
    """(a copy of the base out_dir, its manifest)."""
    shutil.copytree(base / "out", tmp_path / "out", symlinks=True)
    m = tmp_path / "m.csv"
    m.write_text(MANIFEST)
    return tmp_path / "out", m


STOP_CASES = [
    ("steps", ["sample.steps=3"], None, {"a": "steps", "b": "steps", "c": "steps"}),
    ("size", ["sample.size=48*32"], None, {"a": "size", "b": "size", "c": "size"}),
    ("crf", ["output.crf=30"], None, {"a": "output.crf", "b": "output.crf", "c": "output.crf"}),
    ("one-prompt", [], "id,prompt\na,a cat\nb,a wolf\nc,a bird\n", {"b": "prompt"}),
    ("row-pins-the-old-value", ["sample.steps=3"], "id,prompt,steps\na,a cat,\nb,a dog,2\nc,a bird,2\n",
     {"a": "steps"}),
    ("negative-prompt", ["sample.negative_prompt=blurry"], None,
     {"a": "negative_prompt", "b": "negative_prompt", "c": "negative_prompt"}),
    ("run-seed", ["sample.seed=7"], None, {"a": "seed", "b": "seed", "c": "seed"}),   # derived seeds change
]


@pytest.mark.parametrize("name,extra,new_manifest,expected", STOP_CASES, ids=[c[0] for c in STOP_CASES])
def test_changed_settings_stop_before_model_work(name, extra, new_manifest, expected, used, tiny_ckpt, capsys):
    out, m = used
    if new_manifest:
        m.write_text(new_manifest)
    before = snapshot(out)
    rc, err, loaded = run(overrides(tiny_ckpt("tiny-t2v"), out, m, "output.save_latents=true", *extra), capsys)
    assert rc == 2, err
    assert "made before with other settings" in err and "nothing was run" in err and "Traceback" not in err, err
    listed = dict(re.findall(r"^  (\w+): ([\w., ]+?)(?: \(it failed then\))?$", err, re.MULTILINE))
    assert set(listed) == set(expected), err
    for item_id, field in expected.items():
        assert field in listed[item_id].split(", "), (item_id, listed[item_id])
    if "c" in expected:
        assert "  c: " in err and "(it failed then)" in err
    assert "batch.on_change=redo" in err and "batch.on_change=keep" in err
    assert not loaded
    assert snapshot(out) == before                         # config.yaml, history, ledger, videos: untouched


def test_another_checkpoint_is_a_change(used, tiny_ckpt, tmp_path, capsys):
    out, m = used
    other = write_tiny_checkpoint("tiny-t2v", tmp_path / "other-ckpt", seed=1)
    before = snapshot(out)
    rc, err, loaded = run(overrides(other, out, m, "output.save_latents=true"), capsys)
    assert rc == 2 and "  a: checkpoint" in err and "  b: checkpoint" in err, err
    assert not loaded and snapshot(out) == before


def test_what_does_not_change_the_video_is_not_a_change(used, tiny_ckpt, capsys):
    out, m = used
    extra = ["output.save_latents=true", "work.source=queue", "batch.progress=false", "parallel.vae_parallel=false",
             "offload_model=true", "batch.claim_timeout_s=60", "sample.frame_num=6"]   # 6 -> 5 frames: same video
    rc, err, _ = run(overrides(tiny_ckpt("tiny-t2v"), out, m, *extra), capsys)
    assert rc == 0, err
    assert "0 done, 2 skipped (already complete), 0 failed, 1 earlier failures not retried" in err, err


def test_keep_keeps_the_old_videos_and_says_so(used, tiny_ckpt, capsys):
    out, m = used
    videos = snapshot(out / "videos")
    hist = sorted((out / "config.history").iterdir())
    rc, err, _ = run(overrides(tiny_ckpt("tiny-t2v"), out, m, "output.save_latents=true", "sample.steps=3",
                               "batch.on_change=keep"), capsys)
    assert rc == 0, err
    assert "0 done" in err and "3 made before with other settings and KEPT as they are" in err, err
    assert "item a was made with other settings (changed: steps" in err
    assert snapshot(out / "videos") == videos
    new_hist = sorted((out / "config.history").iterdir())
    assert len(new_hist) == len(hist) + 1                 # the run is recorded; the old config is still there
    assert "steps: 3" in (out / "config.yaml").read_text() and "steps: 2" in hist[0].read_text()


def test_redo_makes_them_again_and_replaces_the_old_files(used, tiny_ckpt, capsys):
    out, m = used
    assert (out / "videos" / "a.latents.safetensors").exists()
    rc, err, _ = run(overrides(tiny_ckpt("tiny-t2v"), out, m, "sample.steps=3", "batch.on_change=redo",
                               "batch.retry_failed=true"), capsys)
    assert rc == 0, err                                    # c (failed before) is retried and now succeeds
    recs = Ledger(out, "r").records()
    new = [r for r in recs if r.get("changed")]
    assert sorted(r["id"] for r in new if r["status"] == "ok") == ["a", "b"]
    for item_id in ("a", "b"):
        side = sidecar(out, item_id)
        assert side["steps"] == 3 and side["settings"]["changed"] == ["output.save_latents", "steps"]
        assert side["settings"]["hash"] == [r for r in recs if r["id"] == item_id][-1]["settings"]
        assert not (out / "videos" / f"{item_id}.latents.safetensors").exists()   # stale extra removed
    assert "2 made again with changed settings (batch.on_change=redo)" in err
    # and now the directory is consistent with the new settings: a plain rerun skips everything
    rc, err, _ = run(overrides(tiny_ckpt("tiny-t2v"), out, m, "sample.steps=3"), capsys)
    assert rc == 0 and "0 done, 3 skipped" in err, err


def test_settings_are_recorded_in_sidecar_and_ledger(base):
    out = base / "out"
    side = sidecar(out, "a")
    fields = side["settings"]["fields"]
    for name in ("checkpoint", "model.name", "dtype", "prompt", "negative_prompt", "seed", "size", "frame_num",
                 "steps", "shift", "solver", "guide_scale", "cfg_truncate_steps", "image", "output.save_latents"):
        assert name in fields, name
    assert "id" not in fields and "warnings" not in fields and "frame_num_requested" not in fields
    assert fields["prompt"].startswith("sha256:")          # free text as a digest, never as itself
    rec = {r["id"]: r for r in Ledger(out, "r").records()}
    assert rec["a"]["settings"] == side["settings"]["hash"]
    assert rec["c"]["status"] == "failed" and rec["c"]["settings_fields"]["steps"] == 2
    assert json.loads(json.dumps(fields)) == fields
