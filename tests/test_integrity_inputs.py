"""Batch integrity (issue 12), input classes: the manifest reader (class 1), ids (2), every value validated before
model work (3), messages that say what is really wrong (8), validation cost (9).

Each bad input goes through the real entry (compose + worker.main): exit 2, the message (`file:line column=value:
rule`), no model loaded, nothing written. Valid-but-tricky rows are run for real and each becomes its own video."""
from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest
from integrity_util import BASE, ok_records, overrides, run, sidecar

from wan_dist.batch import images as images_mod
from wan_dist.batch.manifest import load_items
from wan_dist.config import compose
from wan_dist.models.registry import get_model
from wan_dist.models.tiny import make_test_image
from wan_dist.pipeline import request as request_mod

TOKEN_ID = "sk-ABCDEFGHIJKLMNOPQRSTUVWX0123"      # shaped like an API key: it is still just an id


def _csv(text):
    return ("m.csv", text)


def _jsonl(*rows):
    return ("m.jsonl", "\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n")


# (name, model, manifest (file name, text or bytes) or None, extra overrides, expected regex)
CASES = [
    # --- 1. the manifest reader never loses, splits or invents rows ------------------------------------------------
    ("csv-unterminated-quote-later-row", "tiny-t2v", _csv('id,prompt\na,cat\nb,"dog\nc,bird\n'), [],
     r"m\.csv:3: a quoted cell is never closed"),
    ("csv-text-after-closing-quote", "tiny-t2v", _csv('id,prompt\na,"cat" and a dog\n'), [],
     r"m\.csv:2: a closing quote must be followed by a comma or the end of the line"),
    ("csv-not-utf8", "tiny-t2v", ("m.csv", b"id,prompt\na,cat\nb,caf\xe9\n"), [], r"m\.csv:3: not UTF-8 text"),
    ("jsonl-nan-is-not-json", "tiny-t2v", _jsonl('{"prompt": "a", "shift": NaN}'), [],
     r"m\.jsonl:1: NaN is not a JSON number"),
    ("jsonl-two-objects-on-one-line", "tiny-t2v", _jsonl('{"prompt": "a"}{"prompt": "b"}'), [],
     r"m\.jsonl:1: not valid JSON \(Extra data"),
    ("jsonl-object-over-two-lines", "tiny-t2v", ("m.jsonl", '{"prompt":\n "a"}\n'), [],
     r"m\.jsonl:1: not valid JSON[^\n]*\n\s+\S*m\.jsonl:2: not valid JSON"),
    # --- 2. ids are data: exactly the id rule, no look-alikes ------------------------------------------------------
    ("id-trailing-newline", "tiny-t2v", _jsonl({"id": "a\n", "prompt": "x"}), [], r"id='a\\n': must match"),
    ("id-surrounding-spaces", "tiny-t2v", _csv("id,prompt\n a ,x\n"), [], r"m\.csv:2 id=' a ': must match"),
    ("id-case-only-difference", "tiny-t2v", _csv("id,prompt\nClip,x\nclip,y\n"), [],
     r"m\.csv:3 id='clip': differs from id 'Clip' \(line 2\) only in letter case"),
    ("id-cyrillic-lookalike", "tiny-t2v", _jsonl({"id": "\u0430bc", "prompt": "x"}), [], r"id='\u0430bc': must match"),
    ("id-not-a-string", "tiny-t2v", _jsonl({"id": 7, "prompt": "x"}), [], r"m\.jsonl:1 id=7: must be a string"),
    # --- 3. every value, from a row or the config, under the same rule, before any model work ---------------------
    ("config-guide-scale-nan", "tiny-t2v", _csv("prompt\na\n"), ["sample.guide_scale=nan"],
     r"sample\.guide_scale=nan: must be a finite number"),
    ("config-shift-inf", "tiny-t2v", _csv("prompt\na\n"), ["sample.shift=inf"],
     r"sample\.shift=inf: must be a finite number"),
    ("config-claim-timeout-inf", "tiny-t2v", _csv("prompt\na\n"), ["batch.claim_timeout_s=inf"],
     r"batch\.claim_timeout_s=inf: must be a finite number"),
    ("config-fps-zero", "tiny-t2v", _csv("prompt\na\n"), ["model.fps=0"], r"model\.fps=0: must be >= 1"),
    ("row-guide-scale-inf", "tiny-t2v", _csv("prompt,guide_scale\na,inf\n"), [],
     r"m\.csv:2 guide_scale='inf': must be a finite number"),
    ("row-frames-beyond-the-model", "tiny-t2v", _csv("prompt,frame_num\na,5000\n"), [],
     r"m\.csv:2 frame_num=5000: at most 4093 frames"),
    ("config-frames-beyond-the-model", "tiny-t2v", _csv("prompt\na\n"), ["sample.frame_num=100000"],
     r"sample\.frame_num=100000: at most 4093 frames"),
    ("row-steps-beyond-timesteps", "tiny-t2v", _csv("prompt,steps\na,1001\n"), [],
     r"m\.csv:2 steps=1001: must be <= 1000"),
    ("row-size-beyond-the-model", "tiny-t2v", _csv("prompt,size\na,16400*32\n"), [],
     r"m\.csv:2 size=16400\*32: at most 16384 pixels per side"),
    ("image-aspect-leaves-zero-ti2v", "tiny-ti2v", _csv("prompt,image\na,wide.png\n"), [],
     r"m\.csv:2 image='wide\.png' \(4000x10 px\) at size=32\*32: keeping the image's aspect ratio .* leaves a "
     r"side of zero"),
    ("image-aspect-leaves-zero-i2v", "tiny-i2v-moe", _csv("prompt,image\na,tall.png\n"), [],
     r"m\.csv:2 image='tall\.png' \(10x4000 px\) at size=32\*32: .* leaves a side of zero"),
    # --- 8. messages say what is really wrong ----------------------------------------------------------------------
    ("image-is-a-directory", "tiny-ti2v", _csv("prompt,image\na,adir\n"), [],
     r"image='adir': is a directory, not a regular file"),
    ("image-is-a-fifo", "tiny-ti2v", _csv("prompt,image\na,fifo.png\n"), [],
     r"image='fifo\.png': is a FIFO \(named pipe\), not a regular file"),
    ("image-is-a-device", "tiny-ti2v", _csv("prompt,image\na,/dev/null\n"), [],
     r"image='/dev/null': is a character device, not a regular file"),
    ("image-is-a-broken-symlink", "tiny-ti2v", _csv("prompt,image\na,gone.png\n"), [],
     r"image='gone\.png': is a symlink to a missing file"),
    ("jsonl-repeated-key", "tiny-t2v", _jsonl('{"prompt": "a", "seed": 1, "prompt": "b"}'), [],
     r"m\.jsonl:1: key 'prompt' appears twice in the object"),
    ("csv-header-trailing-comma", "tiny-t2v", _csv("id,prompt,\na,b,\n"), [],
     r"m\.csv:1: header column 3 has no name \(a trailing comma at the end of the header\?\)"),
    ("csv-header-empty-name", "tiny-t2v", _csv("id,,prompt\na,,b\n"), [], r"m\.csv:1: header column 2 has no name$"),
    ("manifest-is-a-directory", "tiny-t2v", ("m.csv", None), [], r"manifest='[^']*m\.csv': is a directory, not a"),
    ("manifest-named-json", "tiny-t2v", ("m.json", '{"prompt": "a"}\n'), [],
     r"must end in \.csv or \.jsonl \(JSON Lines: one object per line, named \.jsonl\)"),
]


def _setup(work: Path) -> None:
    make_test_image(work / "wide.png", 4000, 10)
    make_test_image(work / "tall.png", 10, 4000)
    (work / "adir").mkdir()
    os.mkfifo(work / "fifo.png")
    (work / "gone.png").symlink_to(work / "nowhere.png")


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_input_exit_2_with_its_rule_and_nothing_written(case, tmp_path, tiny_ckpt, capsys):
    name, model, manifest, extra, expected = case
    work = tmp_path / "in"
    work.mkdir()
    _setup(work)
    out = tmp_path / "out"
    fname, text = manifest
    if text is None:
        (work / fname).mkdir()
    elif isinstance(text, bytes):
        (work / fname).write_bytes(text)
    else:
        (work / fname).write_text(text, encoding="utf-8", newline="")
    rc, msg, loaded = run(overrides(tiny_ckpt(model), out, work / fname, *extra, model=model), capsys)
    assert rc in (2, None), f"{name}: exit {rc}\n{msg}"          # None: refused by the config layer (exit 2)
    assert re.search(expected, msg, re.MULTILINE), f"{name}: message does not match {expected!r}:\n{msg}"
    assert "Traceback" not in msg
    assert not loaded, f"{name}: a model was loaded before the input was refused"
    assert not out.exists(), f"{name}: out_dir was created"


# -- valid but tricky rows: each its own video, exactly as written --------------------------------------------------
TRICKY = {
    "ls": "line one\u2028line two (U+2028 is text, not a record separator)",
    "nel": "next\u0085line, form\x0cfeed, vertical\x0btab",
    "crlf": "a quoted\r\nline break",
    "big": "x" * 200_000,                          # over the csv module's default cell limit (131072)
    TOKEN_ID: "an id shaped like a secret",
    "ls.mp4.1a2b3c4d": "an id shaped like another id's temp file",
    ".nel.json.tmp-4242": "an id shaped like an old-style temp file",
}


def _csv_cell(text: str) -> str:
    return '"' + text.replace('"', '""') + '"'


def test_tricky_rows_each_become_one_video_and_resume_recognises_them(tmp_path, tiny_ckpt, capsys):
    m = tmp_path / "m.csv"
    rows = "".join(f"{i},{_csv_cell(p)},\n" for i, p in TRICKY.items()) + "one,a single frame,1\n"
    m.write_text("id,prompt,frame_num\n" + rows, encoding="utf-8", newline="")
    j = tmp_path / "m.jsonl"
    j.write_text('{"id": "json-ls", "prompt": "raw \u2028 inside a JSON string"}\n', encoding="utf-8")
    out = tmp_path / "out"
    cfg = compose(overrides(tiny_ckpt("tiny-t2v"), out, m, "sample.steps=1"))
    items = load_items(m, cfg, get_model("tiny-t2v"))
    assert [it.request.id for it in items] == [*TRICKY, "one"]
    assert [it.request.prompt for it in items][:-1] == list(TRICKY.values())
    import wan_dist.worker as worker
    calls = {"load_items": 0}
    real = worker.load_items

    def counting(*a, **k):
        calls["load_items"] += 1
        return real(*a, **k)
    worker.load_items = counting
    try:
        rc, err, _ = run(overrides(tiny_ckpt("tiny-t2v"), out, m, "sample.steps=1"), capsys)
    finally:
        worker.load_items = real
    assert rc == 0, err
    assert calls["load_items"] == 1                               # validated once per run
    assert sorted(r["id"] for r in ok_records(out)) == sorted([*TRICKY, "one"])
    for item_id, prompt in TRICKY.items():
        assert sidecar(out, item_id)["prompt"] == prompt
        assert (out / "videos" / f"{item_id}.mp4").stat().st_size > 0
    one = sidecar(out, "one")
    assert one["frame_num"] == 5 and one["warnings"] == [
        "frame_num 1: one frame is an image, not a video; using 5, the shortest video (4n+1 frames, n >= 1)"]
    rec = next(r for r in ok_records(out) if r["id"] == TOKEN_ID)
    assert rec["mp4"] == f"videos/{TOKEN_ID}.mp4" and sidecar(out, TOKEN_ID)["outputs"]["mp4"] == rec["mp4"]
    # the JSONL line with a raw U+2028 is one row too, into the same out_dir
    rc, err, _ = run(overrides(tiny_ckpt("tiny-t2v"), out, j, "sample.steps=1"), capsys)
    assert rc == 0, err
    assert sidecar(out, "json-ls")["prompt"] == "raw \u2028 inside a JSON string"
    # a rerun recognises every id (the token-shaped one too): nothing redone
    rc, err, loaded = run(overrides(tiny_ckpt("tiny-t2v"), out, m, "sample.steps=1"), capsys)
    assert rc == 0 and "0 done, 8 skipped (already complete), 0 failed" in err, err
    assert len(ok_records(out)) == 9
    for item_id in TRICKY:                                        # nothing taken for a stale temp file
        assert (out / "videos" / f"{item_id}.mp4").is_file() and (out / "videos" / f"{item_id}.json").is_file()


@pytest.mark.parametrize("n,frames,reason", [(1, 5, "one frame is an image, not a video"),
                                             (2, 5, "2 is not of the form 4n+1"),
                                             (4093, 4093, None), (4092, 4093, "4092 is not of the form 4n+1")])
def test_frame_warnings_say_the_real_reason(tmp_path, tiny_ckpt, n, frames, reason):
    m = tmp_path / "m.csv"
    m.write_text(f"prompt,frame_num\na,{n}\n")
    cfg = compose(overrides(tiny_ckpt("tiny-t2v"), tmp_path / "o", m))
    req = load_items(m, cfg, get_model("tiny-t2v"))[0].request
    assert req.frame_num == frames
    assert (reason in req.warnings[0]) if reason else not req.warnings
    assert "1 is not 4n+1" not in " ".join(req.warnings)


# -- 9. validation cost: one scheduler per distinct schedule, one read per image, once per run ------------------------
def test_validation_builds_each_schedule_once_and_reads_each_image_once(tmp_path, tiny_ckpt, monkeypatch):
    make_test_image(tmp_path / "img.png", 32, 32)
    m = tmp_path / "m.csv"
    m.write_text("prompt,steps,image\n" + "".join(f"row {i},{2 + i % 2},img.png\n" for i in range(300)))
    built, opened = [], []
    real_ts = request_mod.timesteps_for
    monkeypatch.setattr(request_mod, "timesteps_for", lambda *a: built.append(a) or real_ts(*a))
    from PIL import Image
    real_open = Image.open
    monkeypatch.setattr(Image, "open", lambda *a, **k: opened.append(1) or real_open(*a, **k))
    request_mod._timesteps.cache_clear()
    request_mod._expert_steps.cache_clear()
    images_mod._CACHE.clear()
    cfg = compose(["model=tiny-ti2v", f"ckpt_dir={tiny_ckpt('tiny-ti2v')}", f"manifest={m}",
                   f"out_dir={tmp_path / 'o'}", *BASE])
    items = load_items(m, cfg, get_model("tiny-ti2v"))
    assert len(items) == 300
    assert sorted(set(built)) == sorted(built) and len(built) == 2, built   # (unipc, 2, 5.0), (unipc, 3, 5.0)
    assert len(opened) == 2                       # one file: verified once, decoded once
    assert len({it.image_digest for it in items}) == 1
