"""Batch robustness, in process on a tiny model: seeds, resume (partial / corrupt leftovers redone), retry_failed,
failure isolation (runtime image error, NaN latents, decode error), disk full, SIGTERM/SIGUSR1 between items and
between denoise steps, paths never leave out_dir, secrets never reach config.yaml / sidecars / the ledger."""
from __future__ import annotations

import errno
import json
import os
import signal
from pathlib import Path

import pytest

from wan_dist import files as atomic
from wan_dist import worker as run_mod
from wan_dist.batch.manifest import load_items
from wan_dist.batch.outputs import OutputDir
from wan_dist.config import compose
from wan_dist.exit_codes import ExitCode
from wan_dist.models.registry import get_model
from wan_dist.observability.redact import REDACTED, redact
from wan_dist.pipeline.video_io import probe_mp4
from wan_dist.worker import main as run_distributed_or_local

BASE = ["sample.steps=2", "sample.frame_num=5", "sample.size=32*32", "batch.progress=false", "device=cpu"]


def cfg_for(ckpt, manifest, out, *extra, model="tiny-t2v"):
    return compose([f"model={model}", f"ckpt_dir={ckpt}", f"manifest={manifest}", f"out_dir={out}", *BASE, *extra])


def write_manifest(path: Path, ids) -> Path:
    path.write_text("id,prompt\n" + "".join(f"{i},prompt for {i}\n" for i in ids))
    return path


def ledger(out: Path) -> list[dict]:
    p = out / "results.jsonl"
    out = []
    for x in (p.read_text().splitlines() if p.exists() else []):
        try:
            out.append(json.loads(x))
        except json.JSONDecodeError:   # a torn line from a simulated crash
            pass
    return out


def ok_ids(out: Path) -> list[str]:
    return [r["id"] for r in ledger(out) if r["status"] == "ok"]


def assert_clean(out: Path, ids):
    """Every ok id has a complete mp4 + sidecar; no temp files; nothing outside the expected names."""
    o = OutputDir(out)
    recs = o.ledger.latest()
    for i in ids:
        assert o.is_complete(i, recs.get(i)), i
    leftovers = [p for p in (out / ".partial").rglob("*") if p.is_file()] if (out / ".partial").exists() else []
    assert not leftovers, leftovers
    assert not list((out / "claims").glob("*")) if (out / "claims").exists() else True


def dead_pid() -> int:
    import subprocess
    import sys
    return int(subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                              text=True, check=True).stdout)


@pytest.fixture
def t2v(tiny_ckpt):
    return tiny_ckpt("tiny-t2v")


# -- seeds -------------------------------------------------------------------------------------------------------
def test_seed_from_run_seed_and_id_not_order(tmp_path, t2v):
    spec = get_model("tiny-t2v")
    a = tmp_path / "a.csv"
    a.write_text("id,prompt\nx,one\ny,two\n,no id here\nz,three\n")
    b = tmp_path / "b.csv"  # reordered, plus another row
    b.write_text("id,prompt\n,no id here\nz,three\nnew,four\ny,two\nx,one\n")
    cfg = cfg_for(t2v, a, tmp_path / "o")
    s1 = {it.request.id: it.request.seed for it in load_items(a, cfg, spec)}
    s1_again = {it.request.id: it.request.seed for it in load_items(a, cfg, spec)}
    s2 = {it.request.id: it.request.seed for it in load_items(b, cfg, spec)}
    assert s1 == s1_again
    assert all(s2[k] == v for k, v in s1.items()), (s1, s2)   # the derived id of the id-less row is stable too
    assert len(set(s1.values())) == len(s1)
    other = {it.request.id: it.request.seed for it in load_items(a, cfg_for(t2v, a, tmp_path / "o", "sample.seed=7"),
                                                                  spec)}
    assert all(other[k] != v for k, v in s1.items())
    c = tmp_path / "c.csv"
    c.write_text("id,prompt,seed\nx,one,123\n")
    assert load_items(c, cfg, spec)[0].request.seed == 123


# -- resume ------------------------------------------------------------------------------------------------------
def test_resume_skips_complete_and_redoes_partial_or_corrupt(tmp_path, t2v, capsys):
    m = write_manifest(tmp_path / "m.csv", ["a", "b", "c", "d", "e"])
    out = tmp_path / "out"
    assert run_distributed_or_local(cfg_for(t2v, m, out)) == 0
    assert sorted(ok_ids(out)) == ["a", "b", "c", "d", "e"]
    v = out / "videos"
    # damage: truncated mp4 (b), truncated sidecar (c), mp4 gone (d), stray temp files (e + a new one), torn ledger
    (v / "b.mp4").write_bytes((v / "b.mp4").read_bytes()[:300])
    (v / "c.json").write_text((v / "c.json").read_text()[:40])
    (v / "d.mp4").unlink()
    dead = OutputDir(out).writer.rsplit("-", 2)[0] + f"-{dead_pid()}-abcdef"   # a writer of this host, now gone
    (out / ".partial" / dead).mkdir(parents=True)
    (out / ".partial" / dead / "e.mp4.1a2b3c4d").write_bytes(b"half a video")
    (out / ".partial" / dead / "a.json.5e6f7a8b").write_text("{")
    with open(out / "ledger" / f"{dead}.jsonl", "a") as fh:
        fh.write('{"id": "e", "status": "o')     # that writer crashed mid-append
    with open(out / "results.jsonl", "a") as fh:
        fh.write('{"id": "e", "status": "o')     # and the merged view of an older wan-dist had a torn tail
    capsys.readouterr()
    assert run_distributed_or_local(cfg_for(t2v, m, out)) == 0
    err = capsys.readouterr().err
    assert "3 done, 2 skipped (already complete), 0 failed (3 redone" in err, err
    assert sorted(ok_ids(out)) == ["a", "b", "b", "c", "c", "d", "d", "e"]
    assert_clean(out, "abcde")
    for line in (out / "results.jsonl").read_text().splitlines()[:-1]:
        if line.startswith('{"id": "e", "status": "o'):
            continue
        json.loads(line)                          # the torn line did not swallow the next record
    # a third run does nothing
    assert run_distributed_or_local(cfg_for(t2v, m, out)) == 0
    assert len(ok_ids(out)) == 8


def test_failure_isolation_and_retry_failed(tmp_path, t2v, monkeypatch, capsys):
    """NaN latents (test hook), a decode error and an image that became unreadable: each recorded as failed with
    its error, the batch goes on; exit 3; retry_failed=true redoes only those."""
    from wan_dist.models.tiny import make_test_image
    from wan_dist.pipeline import vae
    ti2v = t2v.parent / "tiny-ti2v" if (t2v.parent / "tiny-ti2v").exists() else None
    m = write_manifest(tmp_path / "m.csv", ["a", "nan", "dec", "z"])
    out = tmp_path / "out"
    monkeypatch.setenv("WAN_DIST_TEST_INJECT_NAN", "nan")
    real_decode = vae.decode
    calls = []

    def flaky_decode(*a, **k):
        calls.append(1)
        if len(calls) == 2:   # a (1), nan never decodes, dec (2)
            raise RuntimeError("VAE exploded")
        return real_decode(*a, **k)
    monkeypatch.setattr(vae, "decode", flaky_decode)
    assert run_distributed_or_local(cfg_for(t2v, m, out)) == 3
    recs = {r["id"]: r for r in ledger(out)}
    assert recs["a"]["status"] == recs["z"]["status"] == "ok"
    assert recs["nan"]["status"] == "failed" and "FloatingPointError" in recs["nan"]["error"] \
        and "NaN" in recs["nan"]["error"]
    assert recs["dec"]["status"] == "failed" and "VAE exploded" in recs["dec"]["error"]
    for bad in ("nan", "dec"):
        assert not (out / "videos" / f"{bad}.mp4").exists() and not (out / "videos" / f"{bad}.json").exists()
    # rerun without retry: failures stay failures, nothing runs
    capsys.readouterr()
    assert run_distributed_or_local(cfg_for(t2v, m, out)) == 0
    assert len(ledger(out)) == 4
    assert "2 earlier failures not retried" in capsys.readouterr().err
    # retry: only the two failed ones run (the hook is still on for 'nan')
    assert run_distributed_or_local(cfg_for(t2v, m, out, "batch.retry_failed=true")) == 3
    assert [r["id"] for r in ledger(out)[4:]] == ["nan", "dec"]
    assert ledger(out)[-1]["status"] == "ok" and ledger(out)[-2]["status"] == "failed"
    # the image case: valid at validation time, unreadable when the item runs
    im = tmp_path / "im"
    im.mkdir()
    make_test_image(im / "ok.png", 32, 32)
    make_test_image(im / "gone.png", 32, 32)
    (im / "m.csv").write_text("id,prompt,image\ni1,x,ok.png\ni2,y,gone.png\ni3,z,ok.png\n")
    from wan_dist.batch import manifest as manifest_mod
    real_load = manifest_mod.load_items

    def load_then_damage(*a, **k):
        items = real_load(*a, **k)
        (im / "gone.png").write_bytes(b"garbage now")
        return items
    monkeypatch.setattr(run_mod, "load_items", load_then_damage)
    monkeypatch.setattr(vae, "decode", real_decode)
    from wan_dist.models.tiny import write_tiny_checkpoint
    ck = ti2v or write_tiny_checkpoint("tiny-ti2v", tmp_path / "ck-ti2v")
    out2 = tmp_path / "out2"
    assert run_distributed_or_local(cfg_for(ck, im / "m.csv", out2, model="tiny-ti2v")) == 3
    recs = {r["id"]: r for r in ledger(out2)}
    assert recs["i1"]["status"] == recs["i3"]["status"] == "ok"
    assert recs["i2"]["status"] == "failed" and "cannot read image" in recs["i2"]["error"]


def test_disk_full_leaves_no_corrupt_file_and_a_clear_error(tmp_path, t2v, monkeypatch, capsys):
    m = write_manifest(tmp_path / "m.csv", ["a", "b", "c"])
    out = tmp_path / "out"
    real = atomic._write_all
    state = {"n": 0}

    def filling_disk(fh, data):
        state["n"] += 1
        if Path(fh.name).name.startswith("b.mp4."):   # b's mp4 temp file: half written, then the disk is full
            fh.write(data[: len(data) // 2])
            fh.flush()
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(fh, data)
    monkeypatch.setattr(atomic, "_write_all", filling_disk)
    capsys.readouterr()
    assert run_distributed_or_local(cfg_for(t2v, m, out)) == ExitCode.IOERR == 74
    msgs = capsys.readouterr().err
    assert "cannot write outputs of item b" in msgs and "No space left on device (ENOSPC)" in msgs
    assert "ABORTED" in msgs
    assert ok_ids(out) == ["a"] and len(ledger(out)) == 1      # b is not 'failed': it is simply redone later
    assert not (out / "videos" / "b.mp4").exists() and not (out / "videos" / "c.mp4").exists()
    assert_clean(out, ["a"])
    monkeypatch.setattr(atomic, "_write_all", real)
    assert run_distributed_or_local(cfg_for(t2v, m, out)) == 0
    assert sorted(ok_ids(out)) == ["a", "b", "c"]
    assert_clean(out, "abc")


# -- preemption --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("sig,at_step", [(signal.SIGTERM, None), (signal.SIGUSR1, 0), (signal.SIGINT, 0)],
                         ids=["SIGTERM-between-items", "SIGUSR1-between-steps", "SIGINT-between-steps"])
def test_signal_stops_at_a_safe_point(tmp_path, t2v, monkeypatch, capsys, sig, at_step):
    """The signal arrives while item b runs (during its first denoise step). Between items: b finishes, c never
    starts. Between steps: b is dropped with nothing written. Exit 75; the rerun completes the rest exactly once."""
    from wan_dist.observability.progress import Progress
    m = write_manifest(tmp_path / "m.csv", ["a", "b", "c", "d"])
    out = tmp_path / "out"
    state = {"item": None, "sent": False}
    orig_start, orig_step = Progress.item_start, Progress.step

    def item_start(self, n, total, item_id):
        state["item"] = item_id
        return orig_start(self, n, total, item_id)

    def step(self, i, total):
        orig_step(self, i, total)
        if state["item"] == "b" and i == 0 and not state["sent"]:
            state["sent"] = True
            os.kill(os.getpid(), sig)   # the real signal, delivered to this process
    monkeypatch.setattr(Progress, "item_start", item_start)
    monkeypatch.setattr(Progress, "step", step)
    if at_step is None:   # only the between-items point: make the step check see no flag until the step is over
        from wan_dist.batch import runner as runner_mod
        monkeypatch.setattr(runner_mod.BatchRunner, "stop_between_steps", False)
    before = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT)}
    capsys.readouterr()
    assert run_distributed_or_local(cfg_for(t2v, m, out)) == ExitCode.TEMPFAIL == 75
    assert {s: signal.getsignal(s) for s in before} == before          # handlers restored
    done_first = ok_ids(out)
    assert done_first == (["a", "b"] if at_step is None else ["a"]), done_first
    assert all(r["status"] == "ok" for r in ledger(out))
    assert not (out / "videos" / "c.mp4").exists()
    if at_step is not None:
        assert not (out / "videos" / "b.mp4").exists() and not (out / "videos" / "b.json").exists()
    assert_clean(out, done_first)
    msgs = capsys.readouterr().err
    assert f"stopped by {signal.Signals(sig).name}" in msgs
    monkeypatch.undo()
    assert run_distributed_or_local(cfg_for(t2v, m, out)) == 0
    assert sorted(ok_ids(out)) == ["a", "b", "c", "d"]                 # each exactly once
    assert_clean(out, "abcd")


# -- security ----------------------------------------------------------------------------------------------------
def test_output_paths_never_leave_out_dir(tmp_path):
    o = OutputDir(tmp_path / "out")
    o.prepare()
    for bad in ("../x", "a/b", "..", ".", "/etc/passwd", "a\x00b", "", "x" * 129, "a b", "~root"):
        with pytest.raises(ValueError, match=r"id=.*must match"):
            o.path_for(bad, ".mp4")
    outside = tmp_path / "outside.txt"
    outside.write_text("keep")
    (o.videos / "evil.mp4").symlink_to(outside)       # a planted symlink is refused up front, never followed
    with pytest.raises(ValueError, match=r"videos/evil\.mp4 is a symlink"):
        o.check()
    assert not o.is_complete("evil", {"status": "ok"})
    import numpy as np
    o.write_video("evil", np.zeros((5, 32, 32, 3), np.uint8), 16, lossless=False, crf=18)   # replaces the link
    assert outside.read_text() == "keep" and not (o.videos / "evil.mp4").is_symlink()
    assert o.path_for("ok-id_1.2", ".mp4") == o.videos / "ok-id_1.2.mp4"


def test_redact_rules():
    env = {"WANDB_API_KEY": "0123456789abcdef0123456789abcdef01234567", "HF_TOKEN": "hf_abcdefghijklmnopqrstuvwx",
           "HOME": "/root", "MY_PASSWORD": "s3cr3t-pw"}
    doc = {"logger": {"api_key": "abc123456", "project": "p"}, "token": None,
           "argv": ["logger.api_key=zzzzzzzz", "model=tiny-t2v", "+wandb_token=qqqqqqqq"],
           "prompt": "cat with key 0123456789abcdef0123456789abcdef01234567 and s3cr3t-pw",
           "note": "sk-ABCDEFGHIJKLMNOPQRSTUVWX", "home": "/root", "git": "0123456789abcdef0123"}
    r = redact(doc, environ=env)
    assert r["logger"] == {"api_key": REDACTED, "project": "p"} and r["token"] is None
    assert r["argv"] == [f"logger.api_key={REDACTED}", "model=tiny-t2v", f"+wandb_token={REDACTED}"]
    assert "0123456789abcdef0123456789abcdef01234567" not in r["prompt"] and "s3cr3t" not in r["prompt"]
    assert r["note"] == REDACTED and r["home"] == "/root" and r["git"] == "0123456789abcdef0123"


def test_secrets_never_in_config_dump_sidecar_or_ledger(tmp_path, t2v, monkeypatch):
    key = "f00dfeedc0ffee1234567890abcdef0123456789"
    monkeypatch.setenv("WANDB_API_KEY", key)
    monkeypatch.setenv("SOME_SERVICE_TOKEN", "tok-ABCDEFGH-123")
    monkeypatch.setattr("sys.argv", ["launch/run.py", f"+logger.api_key={key}", "model=tiny-t2v"])
    m = tmp_path / "m.csv"
    m.write_text(f"id,prompt\na,a prompt that pastes {key} and tok-ABCDEFGH-123 by mistake\n")
    out = tmp_path / "out"
    assert run_distributed_or_local(cfg_for(t2v, m, out)) == 0
    files = [out / "config.yaml", out / "results.jsonl", out / "videos" / "a.json"]
    for f in files:
        text = f.read_text()
        assert key not in text and "tok-ABCDEFGH-123" not in text, f
    assert REDACTED in (out / "config.yaml").read_text() and REDACTED in (out / "videos" / "a.json").read_text()
    assert probe_mp4(out / "videos" / "a.mp4")["packets"] == 5
