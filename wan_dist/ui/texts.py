"""Every text the UI shows, in Chinese (the seed's users) and English: `ui.lang=zh|en`.

The help texts follow the seed document (002): what each control does, its recommended range and its cost.
Each control: (label, help). Gradio renders a help text as markdown in which even `*` inside code is emphasis: no
`*` in them (sizes are written W×H there).
"""
from __future__ import annotations

ZH = {
    "title": "Wan 视频生成（{model}）",
    "precedence": "**参数优先级**：命令行参数 > 界面参数。命令行设置过的控件显示命令行的值并被锁定"
                  "（灰色，说明中注明）。每次生成都与批处理的一项完全相同地保存到 `{out_dir}`"
                  "（mp4、sidecar JSON、ledger 记录）。",
    "settings": "生成参数设置",
    "basic": "基础参数",
    "truncation": "CFG 截断",
    "advanced": "高级优化参数",
    "generate": "生成视频",
    "video": "生成的视频",
    "status": "状态",
    "used_seed": "实际使用的种子",
    "locked": "已由命令行设置（{how}），界面中不可修改",
    "replica_only": "仅单 GPU 可切换；多卡副本使用启动时的设置",
    "queued": "排队中",
    "denoising": "去噪步数",
    "ok": "完成：{id}，种子 {seed}。已保存 {mp4} 和 {sidecar}",
    "failed": "生成失败（已记录到 ledger）：{error}",
    "stopped": "服务正在停止，本次请求未生成",
    "warnings": "提示：{warnings}",
    "figures": "| 模型加载 | 纯推理 | 专家切换 | 每秒帧数 |\n|---|---|---|---|\n"
               "| {load}（启动时一次） | {inference} | {switch} | {fps}（{frames} 帧） |",
    "single_model": "无（单模型）",
    "switches": "{time}（{n} 次切换）",
    "prompt": ("提示词", "描述想要生成的视频内容"),
    "negative_prompt": ("负面提示词", "描述不希望出现的内容；默认是 Wan 原生的负面提示词，清空即使用该默认值"),
    "image": ("条件图像", "TI2V：上传图像即切换为图生视频（输出保持图像宽高比）；I2V：必须上传"),
    "size": ("视频分辨率", "选择生成视频的分辨率（宽×高，来自模型的尺寸表）；图生视频时为最大面积"),
    "frame_num": ("视频帧数", "需为 4n+1；其他值自动修正为最接近的 4n+1（1 → 5），并在 sidecar 中给出提示"),
    "steps": ("扩散步数", "控制采样质量，步数越多质量越高，耗时也越长"),
    "guide_scale": ("引导比例", "控制生成视频对提示词的遵循程度，值越大越严格遵循（推荐 4.0-10.0）："
                    "低值(4-6)更自由、质量较高；高值(7-10)更贴合提示词，但可能降低画质。1.0 关闭无条件引导"),
    "guide_scale_low": ("引导比例（低噪声专家）",
                        "低噪声专家（后段去噪）的引导比例，值越大越严格遵循提示词；1.0 关闭无条件引导"),
    "guide_scale_high": ("引导比例（高噪声专家）",
                         "高噪声专家（前段去噪，决定构图和运动）的引导比例；1.0 关闭无条件引导"),
    "shift": ("偏移比例", "控制时间偏移强度：值越大，相邻帧之间变化越剧烈，动态效果越明显（推荐 4.0-12.0）；"
              "低值(4-6)更平滑、静态，高值(8-12)更动态"),
    "solver": ("采样器", "unipc（原生默认）或 dpm++，都在原生的 sigma 网格上"),
    "seed": ("随机种子", "控制随机性，-1 表示随机生成；实际使用的种子在生成后显示，可填回以复现同一视频"),
    "cfg_truncate_steps": ("截断步数 N", "最后 N 步（MoE 模型为低噪声专家的最后 N 步）每步只做一次前向传播，"
                           "加速推理；0 = 关闭"),
    "cfg_truncate_high_noise_steps": ("高噪声截断步数 M",
                                      "高噪声专家在切换前的最后 M 步同样截断（仅 MoE 模型）；0 = 关闭"),
    "cfg_truncate_keep": ("截断保留", "截断步保留哪一次前向：uncond（跳过条件前向，种子文档的做法）"
                          "或 cond（跳过无条件前向）"),
    "offload_model": ("模型卸载", "将模型权重从 GPU 显存卸载到 CPU 内存：减少显存占用，适用于显存不足的情况，"
                      "但会降低推理速度"),
    "t5_cpu": ("T5 CPU运行", "将 T5 文本编码器放在 CPU 上运行：可节省大量显存，但文本处理会变慢"),
}

EN = {
    "title": "Wan video generation ({model})",
    "precedence": "**Precedence**: command line > UI. A control set on the command line shows the command line's value "
                  "and is locked (greyed out, with a note). Every generation is saved in `{out_dir}` exactly like a "
                  "batch item (mp4, sidecar JSON, ledger line).",
    "settings": "Generation settings",
    "basic": "Basic",
    "truncation": "CFG truncation",
    "advanced": "Advanced (memory)",
    "generate": "Generate video",
    "video": "Video",
    "status": "Status",
    "used_seed": "Seed used",
    "locked": "set on the command line ({how}); locked in the UI",
    "replica_only": "switchable on a single GPU only; a multi-GPU replica keeps its start-up setting",
    "queued": "queued",
    "denoising": "denoising steps",
    "ok": "done: {id}, seed {seed}. Saved {mp4} and {sidecar}",
    "failed": "generation failed (recorded in the ledger): {error}",
    "stopped": "the server is stopping; this request was not generated",
    "warnings": "note: {warnings}",
    "figures": "| model load | inference | expert switch | frames/s |\n|---|---|---|---|\n| {load} (once, at start) "
               "| {inference} | {switch} | {fps} ({frames} frames) |",
    "single_model": "n/a (single model)",
    "switches": "{time} ({n} switches)",
    "prompt": ("Prompt", "what the video should show"),
    "negative_prompt": ("Negative prompt", "what it should not show; the default is Wan's native negative prompt "
                        "(an empty box uses it too)"),
    "image": ("Conditioning image", "TI2V: an image switches to image-to-video (the output keeps its aspect "
              "ratio); I2V: required"),
    "size": ("Resolution", "W×H from the model's size table; for image-to-video a maximum area"),
    "frame_num": ("Frames", "4n+1; other values are corrected to the nearest 4n+1 (1 -> 5), noted in the sidecar"),
    "steps": ("Sampling steps", "more steps, higher quality, longer run"),
    "guide_scale": ("Guidance scale", "how closely the video follows the prompt (recommended 4.0-10.0): low (4-6) "
                    "freer, often better looking; high (7-10) closer to the prompt, may lose quality. 1.0 turns "
                    "classifier-free guidance off"),
    "guide_scale_low": ("Guidance (low-noise expert)", "guidance of the low-noise expert (late steps); 1.0 turns "
                        "classifier-free guidance off"),
    "guide_scale_high": ("Guidance (high-noise expert)", "guidance of the high-noise expert (early steps: layout "
                         "and motion); 1.0 turns classifier-free guidance off"),
    "shift": ("Shift", "time-shift strength: higher values, larger changes between frames, more motion "
              "(recommended 4.0-12.0); low (4-6) smoother and calmer, high (8-12) more dynamic"),
    "solver": ("Solver", "unipc (native default) or dpm++, on the native sigma grid"),
    "seed": ("Seed", "-1 draws a random seed; the seed used is shown after the run (enter it to get the same "
             "video again)"),
    "cfg_truncate_steps": ("Truncation steps N", "the last N steps (of the low-noise expert for MoE models) run one "
                           "forward pass instead of two: faster; 0 = off"),
    "cfg_truncate_high_noise_steps": ("High-noise truncation M", "the same for the last M steps of the high-noise "
                                      "expert before the switch (MoE only); 0 = off"),
    "cfg_truncate_keep": ("Truncation keeps", "the pass a truncated step runs: uncond (skip the conditional pass, "
                          "as in the seed's tool) or cond (skip the unconditional pass)"),
    "offload_model": ("Model offload", "keep the model weights in CPU memory between uses: less GPU memory, "
                      "slower inference"),
    "t5_cpu": ("T5 on CPU", "run the T5 text encoder on the CPU: saves a lot of GPU memory, slower text encoding"),
}

TEXTS = {"zh": ZH, "en": EN}


def texts(lang: str) -> dict:
    return TEXTS[lang]
