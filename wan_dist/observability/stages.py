"""Stage names of one video: the one list that sidecars, figures, the report and W&B read.

model_load and compile (compile=regional: compiling + warm-up forwards, at load time) are charged to the first video a
process makes; expert_switch happens inside denoise (never added twice);
`total` is the item's wall clock (see observability/figures.py for the timing rule).
"""
STAGES = ("model_load", "compile", "text_encode", "latents", "denoise", "expert_switch", "vae_decode", "save")
TIMING_KEYS = STAGES + ("total",)                                  # the sidecar's `timings`
GEN_STAGES = ("text_encode", "latents", "denoise", "expert_switch", "vae_decode")   # measured inside generate()
INFERENCE_STAGES = ("text_encode", "latents", "denoise", "vae_decode")              # `inference_s`
SUM_STAGES = tuple(s for s in STAGES if s != "expert_switch")      # what `total` must cover
