"""The Gradio page: the form's controls (labels and help in ui.lang), a queue of one, a progress bar over the
denoising steps, the video, the seed used and the four timing figures. The only module that imports gradio.

The page's handler never generates: it validates the form (errors shown as the manifest's messages, no
traceback), hands a Job to rank 0's main thread (session.serve) and relays its step events to the progress bar.
"""
from __future__ import annotations

import logging
import os

from ..batch.manifest import ManifestError
from .session import Job
from .texts import texts

BASIC = ("size", "frame_num", "steps", "guide_scale", "guide_scale_high", "shift", "solver", "seed",
         "negative_prompt")
TRUNCATION = ("cfg_truncate_steps", "cfg_truncate_high_noise_steps", "cfg_truncate_keep")
ADVANCED = ("offload_model", "t5_cpu")
CSS = "#status textarea { font-family: ui-monospace, monospace; }"


def gradio_env(cache_dir) -> None:
    """Before gradio is imported: no analytics; uploads and served copies in this writer's temp area of out_dir
    (removed when the app ends, or by the next run when it crashed: batch.outputs.OutputDir)."""
    logging.getLogger("httpx").setLevel(logging.WARNING)     # gradio's own start-up probes, one line each
    os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
    os.environ["GRADIO_TEMP_DIR"] = str(cache_dir)
    os.environ.pop("GRADIO_SHARE", None)


def _seconds(x) -> str:
    x = float(x or 0.0)
    return f"{x:.3f} s" if x >= 0.1 else f"{x * 1000:.2f} ms"


def figures_table(t: dict, sc: dict) -> str:
    """The four figures of one video, from its sidecar (as in the batch's `[figures]` line)."""
    n = int(sc.get("expert_switches") or 0)
    single = "single" in (sc.get("expert_steps") or {})
    switch = t["single_model"] if single else t["switches"].format(
        time=_seconds((sc.get("timings") or {}).get("expert_switch")), n=n)
    return t["figures"].format(load=_seconds((sc.get("run") or {}).get("model_load_s")),
                               inference=_seconds(sc.get("inference_s")), switch=switch,
                               fps=sc.get("frames_per_second"), frames=(sc.get("video") or {}).get("frames"))


def _component(gr, ctl, t: dict, label_key: str | None = None):
    label, info = t[label_key or ctl.name]
    if ctl.locked:     # in the label (plain text): the help is markdown, which would eat the `*` of a W*H size
        label = f"{label} · {t['locked'].format(how=ctl.locked)}"
    elif ctl.fixed:
        label = f"{label} · {t['replica_only']}"
    kw = {"label": label, "elem_id": ctl.name, "interactive": not (ctl.locked or ctl.fixed)}
    if ctl.kind == "image":
        return gr.Image(value=ctl.value, type="filepath", sources=["upload"], label=f"{label}: {info}",
                        elem_id=ctl.name, interactive=kw["interactive"], height=220)
    if ctl.kind == "text":
        lines = 3 if ctl.name == "prompt" else 2
        return gr.Textbox(value=ctl.value, lines=lines, info=info, **kw)
    if ctl.kind == "choice":
        return gr.Dropdown(choices=list(ctl.choices), value=ctl.value, allow_custom_value=ctl.custom, info=info,
                           **kw)
    if ctl.kind == "bool":
        return gr.Checkbox(value=bool(ctl.value), info=info, **kw)
    if ctl.maximum is not None:
        return gr.Slider(minimum=ctl.minimum, maximum=ctl.maximum, step=ctl.step, value=ctl.value, info=info, **kw)
    return gr.Number(value=ctl.value, precision=0 if ctl.kind == "int" else None, minimum=ctl.minimum,
                     step=ctl.step or 1, info=info, **kw)


def build(session, jobs, lang: str):
    """The Blocks of the page; `jobs`: the queue rank 0's main thread serves."""
    import gradio as gr
    t, form = texts(lang), session.form
    label_key = {"guide_scale": "guide_scale_low"} if session.spec.is_moe else {}
    comps = {}
    with gr.Blocks(title=t["title"].format(model=session.spec.name), analytics_enabled=False) as demo:
        gr.Markdown(f"## {t['title'].format(model=session.spec.name)}\n"
                    + t["precedence"].format(out_dir=session.out.root))
        with gr.Row():
            with gr.Column(scale=1):
                for name in ("prompt", "image"):
                    if name in form.controls:
                        comps[name] = _component(gr, form.controls[name], t)
                with gr.Accordion(t["settings"], open=True):
                    for title, names in ((t["basic"], BASIC), (t["truncation"], TRUNCATION),
                                         (t["advanced"], ADVANCED)):
                        gr.Markdown(f"**{title}**")
                        for name in names:
                            if name in form.controls:
                                comps[name] = _component(gr, form.controls[name], t, label_key.get(name))
                button = gr.Button(t["generate"], variant="primary", elem_id="generate")
            with gr.Column(scale=1):
                video = gr.Video(label=t["video"], elem_id="video", interactive=False, autoplay=False)
                used_seed = gr.Textbox(label=t["used_seed"], elem_id="used_seed", interactive=False)
                status = gr.Textbox(label=t["status"], elem_id="status", interactive=False, lines=4)
                figures = gr.Markdown(elem_id="figures")
        names = [n for n in form.names if n in comps]

        def generate(*values, progress=gr.Progress()):
            try:
                message = session.prepare(dict(zip(names, values)))
            except (ManifestError, ValueError, OSError) as e:   # the manifest's messages; nothing was run
                return None, "", f"error: {e}", ""
            progress(0, desc=t["queued"])
            job = Job(message)
            jobs.put(job)
            return outputs(relay(job, progress, t), t)

        button.click(generate, inputs=[comps[n] for n in names], outputs=[video, used_seed, status, figures],
                     concurrency_limit=1, api_visibility="private")
    demo.queue(default_concurrency_limit=1)
    return demo


def relay(job: Job, progress, t: dict) -> dict:
    """The job's denoising steps to the page's progress bar, until its result (rank 0's main thread makes it)."""
    while True:
        ev = job.events.get()
        if ev[0] == "done":
            return ev[1]
        progress((ev[1] + 1, ev[2]), desc=t["denoising"], unit="steps")


def outputs(r: dict, t: dict):
    """A job's result -> (video, seed used, status, figures)."""
    if r["status"] == "ok":
        sc = r["sidecar"]
        msg = t["ok"].format(id=r["id"], seed=r["seed"], mp4=r["paths"]["mp4"], sidecar=r["paths"]["sidecar"])
        if sc.get("warnings"):
            msg += "\n" + t["warnings"].format(warnings="; ".join(sc["warnings"]))
        return r["mp4"], str(r["seed"]), msg, figures_table(t, sc)
    if r["status"] == "failed":
        return None, str(r.get("seed", "")), t["failed"].format(error=r["error"]), ""
    return None, "", t["stopped"] + (f" ({r['error']})" if r.get("error") else ""), ""


def launch(demo, host: str, port: int):
    """Serve on host:port (no share link, no analytics, no run history); returns the URL."""
    from gradio.themes import Default
    theme = Default(font=["ui-sans-serif", "system-ui", "sans-serif"], font_mono=["ui-monospace", "monospace"])
    demo.launch(server_name=host, server_port=port, share=False, prevent_thread_lock=True, quiet=True,
                ssr_mode=False, run_history=False, footer_links=[], show_error=False, theme=theme, css=CSS,
                enable_monitoring=False, pwa=False, mcp_server=False)
    return demo.local_url
