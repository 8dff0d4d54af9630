"""Loading a tiny native checkpoint: forwards equal the library modules built directly with the same weights;
dtype handling (run dtype, diffusers' fp32 modules); no parameter left on meta."""
import torch
from safetensors.torch import load_file

from wan_dist.models import convert
from wan_dist.models.device import placement
from wan_dist.models.loading import LoadStats, load_dit, load_models, load_pth
from wan_dist.models.registry import MODELS, T5_FILE


def _direct(component, native_cfg, native_sd):
    module = convert.build_library_module(component, native_cfg, device="cpu")
    module.load_state_dict(convert.convert_state_dict(component, dict(native_sd)), strict=True)
    return module.eval()


def test_dit_round_trip_forward(tiny_ckpt):
    spec = MODELS["tiny-t2v-moe"]
    d = tiny_ckpt(spec.name) / "low_noise_model"
    loaded = load_dit(spec, d, torch.float32, "cpu", LoadStats())
    native = {}
    for f in sorted(d.glob("*.safetensors")):
        native.update(load_file(str(f)))
    direct = _direct("dit", spec.dit, native)
    x = torch.randn(1, 16, 2, 4, 6)
    ctx = torch.randn(1, 512, spec.dit["text_dim"])
    t = torch.tensor([700])
    with torch.no_grad():
        a = loaded(hidden_states=x, timestep=t, encoder_hidden_states=ctx, return_dict=False)[0]
        b = direct(hidden_states=x, timestep=t, encoder_hidden_states=ctx, return_dict=False)[0]
    assert torch.equal(a, b) and a.abs().sum() > 0
    assert not any(p.is_meta for p in loaded.parameters()) and not any(b.is_meta for b in loaded.buffers())


def test_t5_and_vae_round_trip(tiny_ckpt):
    spec = MODELS["tiny-ti2v"]
    ck = tiny_ckpt(spec.name)
    t5 = load_pth("t5", spec.t5, ck / T5_FILE, torch.float32, "cpu", LoadStats(), "t5")
    t5_direct = _direct("t5", spec.t5, torch.load(ck / T5_FILE, weights_only=True))
    ids = torch.tensor([[5, 17, 42, 1]])
    with torch.no_grad():
        assert torch.equal(t5(input_ids=ids).last_hidden_state, t5_direct(input_ids=ids).last_hidden_state)
    vae = load_pth("vae2.2", spec.vae, ck / spec.vae_file, torch.float32, "cpu", LoadStats(), "vae")
    vae_direct = _direct("vae2.2", spec.vae, torch.load(ck / spec.vae_file, weights_only=True))
    z = torch.randn(1, 48, 2, 2, 2)
    with torch.no_grad():
        assert torch.equal(vae.decode(z).sample, vae_direct.decode(z).sample)


def test_run_dtype_and_fp32_modules(tiny_ckpt):
    spec = MODELS["tiny-t2v"]
    place = placement(device="cpu", dtype="bf16", t5_dtype="bf16", vae_dtype="fp32", t5_cpu=False,
                      offload_model=False)
    m = load_models(spec, tiny_ckpt(spec.name), place)
    dit = m.dits["single"]
    keep = set(dit._keep_in_fp32_modules)
    for name, p in dit.named_parameters():
        fp32 = any(part in keep for part in name.split("."))
        assert p.dtype == (torch.float32 if fp32 else torch.bfloat16), name
    assert next(m.text_encoder.parameters()).dtype == torch.bfloat16
    assert next(m.vae.parameters()).dtype == torch.float32           # the native code runs the VAE in fp32
    assert m.stats.checkpoint_dtype["t5"] == "bfloat16" and m.stats.checkpoint_dtype["dit"] == "float32"
    # tied T5 embeddings stay one tensor
    assert m.text_encoder.shared.weight.data_ptr() == m.text_encoder.encoder.embed_tokens.weight.data_ptr()
