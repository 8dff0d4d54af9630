"""The Gradio app in a real headless Chromium (Debian `chromium`, driven by Playwright; never a downloaded browser).

One process: the controls the command line set (the seed's `--sample_shift 7 --t5_cpu` and a Hydra override) show
that value and are disabled; a prompt makes a tiny video that plays in the page (duration > 0) and is saved in
out_dir like a batch item; a bad input shows the manifest's message and writes nothing; an uploaded image makes a
second video without loading the models again; SIGTERM ends the app with exit 0, nothing left outside out_dir.
Two ranks (`wan-dist torchrun ... parallel.ulysses=2`): the same from the page, in Chinese, and the video's latents
and frames equal a single-process run of the same request.

WAN_DIST_UI_SCREENSHOT=1 also writes the pages' screenshots to docs/ui.png and docs/ui-zh.png (the README shows
them).
"""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = Path("/usr/lib/chromium/chromium")      # the real binary (/usr/bin/chromium is a shell wrapper)
WAN_DIST = Path(sys.executable).with_name("wan-dist")
TINY = ["device=cpu", "sample.steps=2", "sample.frame_num=5", "sample.size=32*32", "ui.port=0"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", "WANDB_MODE": "offline"}
WAIT_MS = 300_000          # generous: the page took 10-20 s to come up under load; every wait polls a condition

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def browser():
    if not CHROMIUM.is_file():
        pytest.skip(f"the UI tests drive Debian's chromium ({CHROMIUM} is missing): `make system-deps` installs it")
    from playwright.sync_api import sync_playwright
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
            "--no-first-run"])                       # a fresh temporary profile per launch
        yield b
        b.close()


class App:
    """The app as a subprocess; its URL from the line it prints once the page is served."""

    def __init__(self, cmd: list[str], log: Path, cwd: Path):
        cwd.mkdir(parents=True, exist_ok=True)
        self.log_path = log
        self.fh = open(log, "w")
        self.proc = subprocess.Popen(cmd, cwd=cwd, env=ENV, stdout=self.fh, stderr=subprocess.STDOUT,
                                     start_new_session=True)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def url(self) -> str:
        deadline = time.monotonic() + WAIT_MS / 1000
        while time.monotonic() < deadline:
            m = re.search(r"wan-dist ui: serving (http://\S+)", self.log())
            if m:
                return m.group(1)
            assert self.proc.poll() is None, f"the app ended (exit {self.proc.returncode}):\n{self.log()[-4000:]}"
            time.sleep(0.2)
        raise AssertionError("the app did not come up:\n" + self.log()[-4000:])

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=300)
        finally:
            self.fh.close()

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        self.fh.close()


def control(page, name: str, kind: str = "input"):
    return page.locator(f"#{name} {kind}").first


def status(page) -> str:
    return control(page, "status", "textarea").input_value()


def generate(page, previous: str) -> str:
    """Click Generate; the new status (the page's result: done or error)."""
    page.click("#generate")
    page.wait_for_function("prev => { const t = document.querySelector('#status textarea');"
                           " return t && t.value && t.value !== prev; }", arg=previous, timeout=WAIT_MS)
    return status(page)


def wait_video(page, item_id: str) -> float:
    """The page's video element shows this item and has loaded its metadata: its duration (seconds)."""
    page.wait_for_function("id => { const v = document.querySelector('#video video');"
                           " return v && v.src.includes(id) && v.duration > 0; }", arg=item_id, timeout=WAIT_MS)
    return page.evaluate("document.querySelector('#video video').duration")


def set_number(page, name: str, value) -> None:
    box = control(page, name, "input[type=number]")
    box.fill(str(value))
    box.press("Tab")                                   # gradio takes the value on change/blur


def done_id(text: str) -> str:
    m = re.search(r"done: (ui-[0-9]{8}-[0-9]{6}-[0-9a-f]{6})", text)
    assert m, text
    return m.group(1)


def sidecar(out: Path, item_id: str) -> dict:
    return json.loads((out / "videos" / f"{item_id}.json").read_text())


def test_app_in_a_browser(browser, tmp_path, tiny_ckpt, test_image):
    out, cwd = tmp_path / "out", tmp_path / "cwd"
    app = App([sys.executable, str(REPO / "launch/app.py"), "model=tiny-ti2v", f"ckpt_dir={tiny_ckpt('tiny-ti2v')}",
               f"out_dir={out}", *TINY, "ui.lang=en", "--sample_shift", "7", "--t5_cpu"], tmp_path / "app.log", cwd)
    try:
        page = browser.new_page(viewport={"width": 1400, "height": 1500})
        requested: list[str] = []
        page.on("request", lambda r: requested.append(r.url))
        url = app.url()
        page.goto(url, timeout=WAIT_MS)
        page.wait_for_selector("#generate", timeout=WAIT_MS)
        # 1. the command line wins: its values, disabled, with the note; the rest is free, the model's defaults
        shift = control(page, "shift", "input[type=number]")
        assert shift.input_value() == "7" and shift.is_disabled()
        assert "set on the command line (--sample_shift 7)" in page.locator("#shift").inner_text()
        t5 = control(page, "t5_cpu", "input[type=checkbox]")
        assert t5.is_checked() and t5.is_disabled()
        steps = control(page, "steps", "input[type=number]")
        assert steps.input_value() == "2" and steps.is_disabled()
        guide = control(page, "guide_scale", "input[type=number]")
        assert guide.input_value() == "5" and guide.is_enabled()                 # tiny-ti2v's default
        assert control(page, "seed").input_value() == "-1" and control(page, "seed").is_enabled()
        assert not control(page, "offload_model", "input[type=checkbox]").is_checked()
        # 2. a prompt -> a video that plays in the page, saved like a batch item
        control(page, "prompt", "textarea").fill("a red fox running through fresh snow")
        first = generate(page, "")
        item1 = done_id(first)
        assert wait_video(page, item1) > 0
        used = int(control(page, "used_seed", "textarea").input_value())
        sc1 = sidecar(out, item1)
        assert sc1["seed"] == used and sc1["shift"] == 7.0 and sc1["prompt"].startswith("a red fox")
        assert (out / "videos" / f"{item1}.mp4").stat().st_size == sc1["video"]["bytes"]
        figures = page.locator("#figures").inner_text()
        assert "frames/s" in figures and "model load" in figures and "n/a (single model)" in figures
        # 3. a bad input: the manifest's message in the page, no traceback, nothing written
        set_number(page, "cfg_truncate_steps", 5)
        err = generate(page, first)
        assert err.startswith("error: 1 problem in the request (nothing was run):"), err
        assert "cfg_truncate_steps=5: must be between 0 and 2, the steps the model runs (2 steps, shift 7.0)" in err
        assert "Traceback" not in err and sorted(p.name for p in (out / "videos").iterdir()) == \
            sorted([f"{item1}.mp4", f"{item1}.json"])
        # 4. an uploaded image (ti2v image mode) and a chosen seed: a second video, models not loaded again
        set_number(page, "cfg_truncate_steps", 1)
        set_number(page, "seed", 1234)
        page.set_input_files("#image input[type=file]", str(test_image))
        page.wait_for_selector("#image img", timeout=WAIT_MS)
        item2 = done_id(generate(page, err))
        assert wait_video(page, item2) > 0
        sc2 = sidecar(out, item2)
        assert sc2["seed"] == 1234 and sc2["cfg_truncate_steps"] == 1
        assert sc2["image"] == str(out / "inputs" / f"{item2}.png")                # kept with the outputs
        assert sc2["timings"]["model_load"] == 0 and sc2["run"]["model_load_s"] == sc1["run"]["model_load_s"]
        shot = tmp_path / "ui.png"
        page.screenshot(path=str(shot), full_page=True)
        assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 20_000
        if os.environ.get("WAN_DIST_UI_SCREENSHOT") == "1":
            shutil.copyfile(shot, REPO / "docs" / "ui.png")
        page.close()
        outside = [u for u in requested if not u.startswith((url, "data:", "blob:"))]
        assert requested and not outside, outside           # no web fonts, no analytics, no CDN
        # 5. SIGTERM: a clean stop, exit 0; the ledger has both; nothing left in the cwd or temp areas
        assert app.stop() == 0, app.log()[-4000:]
    finally:
        app.kill()
    log = app.log()
    assert "Traceback" not in log, log[-4000:]
    ok = [json.loads(x)["id"] for x in (out / "results.jsonl").read_text().splitlines()]
    assert sorted(ok) == sorted([item1, item2])
    assert not list(cwd.iterdir()) and not any((out / ".partial").rglob("*.*"))
    assert not list((out / "claims").glob("*.claim"))


def test_two_rank_app_in_a_browser_equals_one_process(browser, tmp_path, tiny_ckpt):
    from PIL import Image

    from wan_dist import config as config_mod
    from wan_dist.batch.extras import load_latents
    from wan_dist.worker import run
    ckpt, out = tiny_ckpt("tiny-t2v-moe"), tmp_path / "out"
    same = ["model=tiny-t2v-moe", f"ckpt_dir={ckpt}", *TINY, "output.save_latents=true", "output.frames=png",
            "batch.progress=false"]
    app = App([str(WAN_DIST), "torchrun", "--standalone", "--nproc_per_node", "2", str(REPO / "launch/app.py"),
               *same, f"out_dir={out}", "parallel.ulysses=2", "ui.lang=zh", "--sample_guide_scale", "4"],
              tmp_path / "app.log", tmp_path / "cwd")
    try:
        page = browser.new_page(viewport={"width": 1400, "height": 1500})
        page.goto(app.url(), timeout=WAIT_MS)
        page.wait_for_selector("#generate", timeout=WAIT_MS)
        text = page.locator("body").inner_text()
        assert "引导比例（高噪声专家）" in text and "参数优先级" in text and "生成视频" in text
        for name in ("guide_scale", "guide_scale_high"):     # the official float sets both experts
            box = control(page, name, "input[type=number]")
            assert box.input_value() == "4" and box.is_disabled()
            assert "已由命令行设置（--sample_guide_scale 4）" in page.locator(f"#{name}").inner_text()
        for name in ("offload_model", "t5_cpu"):             # a replica keeps its start-up placement
            assert control(page, name, "input[type=checkbox]").is_disabled()
        control(page, "prompt", "textarea").fill("两只猫在海滩上奔跑")
        set_number(page, "cfg_truncate_high_noise_steps", 9)
        err = generate(page, "")
        assert err.startswith("error: 1 problem in the request (nothing was run):"), err
        assert "cfg_truncate_high_noise_steps=9: must be between 0 and" in err and "Traceback" not in err
        set_number(page, "cfg_truncate_high_noise_steps", 0)
        set_number(page, "seed", 1234)
        item = done_id(generate(page, err).replace("完成：", "done: ").replace("，", ", "))
        assert wait_video(page, item) > 0
        if os.environ.get("WAN_DIST_UI_SCREENSHOT") == "1":
            page.screenshot(path=str(REPO / "docs" / "ui-zh.png"), full_page=True)
        page.close()
        assert app.stop() == 0, app.log()[-4000:]          # wan-dist torchrun forwards SIGTERM to both ranks
    finally:
        app.kill()
    log = app.log()
    assert "wan-dist torchrun: exit 0" in log and "Traceback" not in log, log[-4000:]
    sc = sidecar(out, item)
    assert sc["layout"]["world_size"] == 2 and sc["layout"]["ulysses"] == 2 and sc["seed"] == 1234
    assert sc["guide_scale"] == 4.0 and sc["guide_scale_high"] == 4.0
    # the same request in one process (the batch path): the same latents and frames
    m = tmp_path / "ref.csv"
    m.write_text("id,prompt,seed\nref,两只猫在海滩上奔跑,1234\n")
    ref = tmp_path / "ref"
    assert run(config_mod.compose([*same, f"out_dir={ref}", f"manifest={m}", "sample.guide_scale=4",
                                   "sample.guide_scale_high=4"])) == 0
    got, _ = load_latents(out / "videos" / f"{item}.latents.safetensors")
    want, _ = load_latents(ref / "videos" / "ref.latents.safetensors")
    assert got.shape == want.shape and float((got - want).abs().max()) <= 1e-5

    def frames(d: Path) -> np.ndarray:
        return np.stack([np.asarray(Image.open(p), dtype=np.int16) for p in sorted(d.glob("frame_*.png"))])
    a, b = frames(out / "videos" / item), frames(ref / "videos" / "ref")
    assert a.shape == b.shape and a.shape[0] == 5 and int(np.abs(a - b).max()) <= 1
