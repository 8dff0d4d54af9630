"""Deterministic tiny random-weight checkpoints in the exact *native* Wan layout (wan_facts.md §1.3).

Layout written by `write_tiny_checkpoint("tiny-t2v-moe", d)`:
    d/{high_noise_model,low_noise_model}/config.json                               (root for single-DiT models)
    d/.../diffusion_pytorch_model-0000i-of-0000n.safetensors + .safetensors.index.json   (fp32, native names)
    d/models_t5_umt5-xxl-enc-bf16.pth       native T5 keys, bf16
    d/Wan2.1_VAE.pth | Wan2.2_VAE.pth       native VAE keys, fp32
    d/google/umt5-xxl/                      sentencepiece unigram tokenizer (vocab = spec.t5["vocab_size"])
    d/README.txt
Weights come from each library module's own init under a seed derived from (seed, component), so the same seed
gives byte-identical files. The tokenizer does not depend on the seed.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import random
import shutil
import tempfile
from pathlib import Path

from wan_dist.models.registry import DIT_WEIGHTS, T5_FILE, TINY_MODELS, TOKENIZER_DIR, ModelSpec, get_model

COMMON_WORDS = (
    "a an the cat dog bird fish horse robot city forest ocean sea beach sunset sunrise mountain river lake sky "
    "cloud rain snow tree flower garden street car train boat house castle bridge night day light dark red blue "
    "green yellow golden white black small big old young happy walking running flying swimming dancing on in at "
    "of with under over near through and is are by from to slow fast camera view close shot wide cinematic "
    "video scene beautiful bright quiet busy playing sitting standing looking under moon star fire water wind"
).split()
_SYLLABLES = ("ka", "lo", "mi", "ran", "te", "su", "bel", "or", "an", "is", "ver", "din", "po", "sha", "gul", "et",
              "tra", "ne", "qui", "mor")


def _derived_seed(seed: int, part: str) -> int:
    return int.from_bytes(hashlib.sha256(f"wan-dist-tiny:{seed}:{part}".encode()).digest()[:8], "little") % 2**63


def _corpus(n_sentences: int = 800) -> list[str]:
    """English-ish sentences: common prompt words plus pseudo-words (sentencepiece needs ~300 distinct words
    to fill a 256-piece unigram vocab)."""
    r = random.Random(1234)
    pseudo = ["".join(r.choice(_SYLLABLES) for _ in range(r.randint(1, 3))) for _ in range(400)]
    words = list(COMMON_WORDS) * 3 + pseudo
    return [" ".join(r.choice(words) for _ in range(r.randint(4, 14))) for _ in range(n_sentences)]


def write_tokenizer(out: Path, vocab_size: int) -> None:
    """Train a unigram sentencepiece model in-process (pad 0, eos 1, unk 2) and save it as a T5 tokenizer."""
    import sentencepiece as spm
    from transformers import T5Tokenizer

    model = io.BytesIO()  # not model_prefix: the proto would record the (random) temp path and break determinism
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(_corpus()), model_writer=model, vocab_size=vocab_size, model_type="unigram",
        pad_id=0, eos_id=1, unk_id=2, bos_id=-1, character_coverage=1.0, num_threads=1, minloglevel=2)
    with tempfile.TemporaryDirectory() as tmp:
        Path(tmp, "spiece.model").write_bytes(model.getvalue())
        # transformers 5: T5Tokenizer(vocab_file=...) silently ignores the file (env_notes §3); from_pretrained works
        tok = T5Tokenizer.from_pretrained(tmp, extra_ids=0)
        if len(tok) != vocab_size:
            raise RuntimeError(f"tiny tokenizer has {len(tok)} tokens, expected {vocab_size}")
        out.mkdir(parents=True, exist_ok=True)
        tok.save_pretrained(str(out))
        shutil.copyfile(os.path.join(tmp, "spiece.model"), out / "spiece.model")


def _library_weights(component: str, native_cfg: dict, seed: int, **to_native_kw) -> dict:
    import torch

    from wan_dist.models import convert

    with torch.random.fork_rng(devices=[]):  # leave the caller's global RNG as it was
        torch.manual_seed(seed)
        module = convert.build_library_module(component, native_cfg, device="cpu")
    sd = convert.to_native_state_dict(component, module.state_dict(), **to_native_kw)
    return {k: v.detach().contiguous().clone() for k, v in sd.items()}


def _write_dit(folder: Path, spec: ModelSpec, seed: int) -> None:
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(spec.dit, indent=2) + "\n")
    sd = _library_weights("dit", spec.dit, seed)
    n = max(spec.dit_shards, 2)
    keys = list(sd)
    total = sum(t.numel() * t.element_size() for t in sd.values())
    shards: list[list[str]] = [[] for _ in range(n)]
    acc = 0
    for k in keys:  # split by cumulative bytes, like save_pretrained's max_shard_size
        shards[min(n - 1, acc * n // total)].append(k)
        acc += sd[k].numel() * sd[k].element_size()
    if not all(shards):  # one huge tensor swallowed a shard: fall back to equal key counts
        shards = [keys[i * len(keys) // n:(i + 1) * len(keys) // n] for i in range(n)]
    weight_map = {}
    for i, ks in enumerate(shards, 1):
        fname = f"{DIT_WEIGHTS}-{i:05d}-of-{n:05d}.safetensors"
        save_file({k: sd[k] for k in ks}, str(folder / fname), metadata={"format": "pt"})
        weight_map.update({k: fname for k in ks})
    index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
    (folder / f"{DIT_WEIGHTS}.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")


def write_tiny_checkpoint(model_name: str, out_dir, seed: int = 0, overwrite: bool = False,
                          spec: ModelSpec | None = None) -> Path:
    """Write the tiny model's native checkpoint to `out_dir` atomically (temp dir + rename) and return its path.
    `spec`: a tiny ModelSpec of the caller's own (e.g. a benchmark's wider DiT) instead of the registry's."""
    import torch

    spec = spec or get_model(model_name)
    if not spec.tiny:
        raise ValueError(f"model={model_name!r}: write_tiny_checkpoint only writes tiny random-weight models "
                         f"({', '.join(TINY_MODELS)}); real checkpoints come from the Wan-AI repos")
    out = Path(out_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        if not overwrite:
            raise ValueError(f"out_dir={str(out)!r}: exists and is not empty; pass overwrite=True (--overwrite) "
                             f"to replace it")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=out.name + ".tmp-", dir=out.parent))
    os.chmod(tmp, 0o755)  # mkdtemp makes it 0700; the renamed checkpoint should be readable like any other dir
    try:
        for sub in spec.dit_dirs():
            _write_dit(tmp / sub if sub else tmp, spec, _derived_seed(seed, f"dit:{sub}"))
        t5 = _library_weights("t5", spec.t5, _derived_seed(seed, "t5"))
        torch.save({k: v.to(torch.bfloat16) for k, v in t5.items()}, tmp / T5_FILE)
        kw = {"num_res_blocks": spec.vae["num_res_blocks"]} if spec.vae_version == "2.2" else {}
        vae = _library_weights("vae" + spec.vae_version, spec.vae, _derived_seed(seed, "vae"), **kw)
        torch.save({k: v.float() for k, v in vae.items()}, tmp / spec.vae_file)
        write_tokenizer(tmp / TOKENIZER_DIR, spec.t5["vocab_size"])
        (tmp / "README.txt").write_text(
            f"wan-dist tiny checkpoint for model {spec.name} (seed {seed}).\n"
            "RANDOM WEIGHTS: made by `wan-dist tiny-checkpoint` for tests and demos; its videos are noise.\n"
            "Native Wan layout (DiT config.json + sharded safetensors, T5 and VAE .pth, google/umt5-xxl/).\n")
        old = None
        if out.exists():  # move the old one aside first so `out` is never half-written
            old = Path(tempfile.mkdtemp(prefix=out.name + ".old-", dir=out.parent)) / "old"
            os.replace(out, old)
        os.replace(tmp, out)
        if old is not None:
            shutil.rmtree(old.parent, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def make_test_image(path, w: int, h: int):
    """A deterministic RGB PNG (gradient + a few shapes) for image-conditioned rows; returns the path."""
    from PIL import Image, ImageDraw

    img = Image.new("RGB", (w, h))
    img.putdata([(255 * x // max(w - 1, 1), 255 * y // max(h - 1, 1), 128) for y in range(h) for x in range(w)])
    draw = ImageDraw.Draw(img)
    draw.ellipse([w // 8, h // 8, w // 2, h // 2], fill=(240, 200, 40))
    draw.rectangle([w // 2, h // 2, w - w // 8, h - h // 8], fill=(30, 60, 200))
    draw.line([0, h - 1, w - 1, 0], fill=(255, 255, 255), width=max(1, min(w, h) // 32))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, format="PNG")
    return path
