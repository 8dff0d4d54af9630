"""Model registry: what each Wan task is made of (structure only).

One `ModelSpec` per task (`t2v-1.3B`, `t2v-14B`, `ti2v-5B`, `t2v-A14B`, `i2v-A14B`) plus tiny random-weight
variants that keep the real block structure (2.1 VAE for tiny-t2v/tiny-*-moe, 2.2 VAE for tiny-ti2v, two experts for
the moe ones) and shrink only widths, layers and heads.  Facts: shared/reference/wan_facts.md §1–§6.
How a task is *sampled* (steps, shift, guidance, MoE boundary, fps, frames, sizes) is not here: those defaults live in
conf/model/<name>.yaml, their one owner.
"""
from __future__ import annotations

from dataclasses import dataclass, field

# Wan's fixed default negative prompt (wan/configs/shared_config.py `sample_neg_prompt`, verbatim). The native CLI
# calls generate() with n_prompt="", which the native code replaces with this list.
NATIVE_NEGATIVE_PROMPT = (
    "色调艳丽，过曝，静态，细节模糊不清，字幕，风格，作品，画作，画面，静止，整体发灰，最差质量，低质量，JPEG压缩残留，"
    "丑陋的，残缺的，多余的手指，画得不好的手部，画得不好的脸部，畸形的，毁容的，形态畸形的肢体，手指融合，"
    "静止不动的画面，杂乱的背景，三条腿，背景人很多，倒着走"
)

T5_FILE = "models_t5_umt5-xxl-enc-bf16.pth"
TOKENIZER_DIR = "google/umt5-xxl"
DIT_WEIGHTS = "diffusion_pytorch_model"  # + ".safetensors" or "-0000i-of-0000n.safetensors" + ".safetensors.index.json"
EXPERT_DIRS = ("high_noise_model", "low_noise_model")  # diffusers order: transformer = high, transformer_2 = low

# positions the DiT's rotary embedding covers per axis (latent frames, patch rows, patch columns): diffusers'
# WanTransformer3DModel rope_max_seq_len, the native rope_params(1024, ...); models/convert.py builds the DiT with it
ROPE_MAX_SEQ_LEN = 1024

VAE_FILES = {"2.1": "Wan2.1_VAE.pth", "2.2": "Wan2.2_VAE.pth"}
VAE_STRIDES = {"2.1": (4, 8, 8), "2.2": (4, 16, 16)}

# native VAE / T5 configs (the keys of native_keys.json "config")
VAE21_REAL = {"dim": 96, "z_dim": 16, "dim_mult": [1, 2, 4, 4], "num_res_blocks": 2, "attn_scales": [],
              "temperal_downsample": [False, True, True], "dropout": 0.0}
VAE22_REAL = {"dim": 160, "dec_dim": 256, "z_dim": 48, "dim_mult": [1, 2, 4, 4], "num_res_blocks": 2,
              "attn_scales": [], "temperal_downsample": [False, True, True], "dropout": 0.0}
T5_REAL = {"vocab_size": 256384, "dim": 4096, "dim_attn": 4096, "dim_ffn": 10240, "num_heads": 64,
           "encoder_layers": 24, "num_buckets": 32, "shared_pos": False, "dropout": 0.1}
# tiny: only widths shrink; num_res_blocks, dim_mult and temporal flags stay (verified_parity.md: a VAE with
# num_res_blocks 1 is not the native layout any more).
VAE21_TINY = dict(VAE21_REAL, dim=8)
VAE22_TINY = dict(VAE22_REAL, dim=8, dec_dim=16)
T5_TINY = {"vocab_size": 256, "dim": 32, "dim_attn": 32, "dim_ffn": 64, "num_heads": 4, "encoder_layers": 2,
           "num_buckets": 32, "shared_pos": False, "dropout": 0.1}


def _dit(model_type, dim, ffn_dim, heads, layers, in_dim, out_dim, text_dim=4096):
    native_cfg = {"_class_name": "WanModel", "_diffusers_version": "0.33.0", "model_type": model_type, "dim": dim,
           "ffn_dim": ffn_dim, "freq_dim": 256, "in_dim": in_dim, "out_dim": out_dim, "num_heads": heads,
           "num_layers": layers, "eps": 1e-06, "text_len": 512}
    if text_dim != 4096:
        # not in real config.json files (an ignored constructor argument there, default 4096); tiny models need it
        native_cfg["text_dim"] = text_dim
    return native_cfg


@dataclass(frozen=True)
class ModelSpec:
    name: str
    family: str                      # "t2v" | "ti2v" | "i2v": how latents and conditioning are built
    dit: dict                        # native DiT config.json
    experts: tuple[str, ...]         # () = one DiT in the checkpoint root; else the expert sub-directories
    vae_version: str                 # "2.1" | "2.2"
    vae: dict                        # native VAE config
    t5: dict                         # native T5 config
    image: str                       # "none" | "optional" (ti2v: image switches to i2v mode) | "required"
    tiny: bool = False
    repo: str | None = None          # hub repo id, the same OWNER/NAME on Hugging Face and ModelScope; None for tiny
    dit_shards: int = 2              # how many safetensors shards the tiny writer produces
    notes: str = ""
    extra: dict = field(default_factory=dict)

    # -- derived facts -------------------------------------------------------------------------------------------
    @property
    def is_moe(self) -> bool:
        return len(self.experts) == 2

    @property
    def vae_file(self) -> str:
        return VAE_FILES[self.vae_version]

    @property
    def vae_stride(self) -> tuple[int, int, int]:
        return VAE_STRIDES[self.vae_version]

    @property
    def z_dim(self) -> int:
        return self.vae["z_dim"]

    @property
    def patch_size(self) -> tuple[int, int, int]:
        return tuple(self.dit.get("patch_size", (1, 2, 2)))

    @property
    def num_heads(self) -> int:
        return self.dit["num_heads"]

    @property
    def size_multiple(self) -> int:
        """Width and height must be multiples of this (VAE spatial stride x DiT patch)."""
        return self.vae_stride[1] * self.patch_size[1]

    def dit_dirs(self) -> tuple[str, ...]:
        """Sub-directories holding a DiT ("" = the checkpoint root)."""
        return self.experts or ("",)


def _real(name, family, dit, **kw):
    vae_version = kw.pop("vae_version", "2.1")
    return ModelSpec(name=name, family=family, dit=dit, vae_version=vae_version,
                     vae=VAE22_REAL if vae_version == "2.2" else VAE21_REAL, t5=T5_REAL, **kw)


def _tiny(name, family, model_type, in_dim, out_dim, **kw):
    vae_version = kw.pop("vae_version", "2.1")
    dit = _dit(model_type, 64, 128, 2, 2, in_dim, out_dim, text_dim=T5_TINY["dim"])
    return ModelSpec(name=name, family=family, dit=dit, vae_version=vae_version,
                     vae=VAE22_TINY if vae_version == "2.2" else VAE21_TINY, t5=T5_TINY, tiny=True, **kw)


MODELS: dict[str, ModelSpec] = {m.name: m for m in [
    _real("t2v-1.3B", "t2v", _dit("t2v", 1536, 8960, 12, 30, 16, 16), experts=(), image="none",
          repo="Wan-AI/Wan2.1-T2V-1.3B"),
    _real("t2v-14B", "t2v", _dit("t2v", 5120, 13824, 40, 40, 16, 16), experts=(), image="none",
          repo="Wan-AI/Wan2.1-T2V-14B"),
    _real("ti2v-5B", "ti2v", _dit("ti2v", 3072, 14336, 24, 30, 48, 48), experts=(), vae_version="2.2",
          image="optional", repo="Wan-AI/Wan2.2-TI2V-5B"),
    _real("t2v-A14B", "t2v", _dit("t2v", 5120, 13824, 40, 40, 16, 16), experts=EXPERT_DIRS, image="none",
          repo="Wan-AI/Wan2.2-T2V-A14B"),
    _real("i2v-A14B", "i2v", _dit("i2v", 5120, 13824, 40, 40, 36, 16), experts=EXPERT_DIRS, image="required",
          repo="Wan-AI/Wan2.2-I2V-A14B",
          notes="size is a maximum area; the output keeps the image's aspect ratio"),
    _tiny("tiny-t2v", "t2v", "t2v", 16, 16, experts=(), image="none"),
    _tiny("tiny-ti2v", "ti2v", "ti2v", 48, 48, experts=(), vae_version="2.2", image="optional"),
    _tiny("tiny-t2v-moe", "t2v", "t2v", 16, 16, experts=EXPERT_DIRS, image="none"),
    _tiny("tiny-i2v-moe", "i2v", "i2v", 36, 16, experts=EXPERT_DIRS, image="required"),
]}

REAL_MODELS = tuple(n for n, m in MODELS.items() if not m.tiny)
TINY_MODELS = tuple(n for n, m in MODELS.items() if m.tiny)


def get_model(name: str) -> ModelSpec:
    try:
        return MODELS[name]
    except KeyError:
        raise ValueError(f"model={name!r}: unknown model; choose one of {', '.join(MODELS)}") from None
