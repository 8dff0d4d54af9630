"""Single-device generation pipeline: request -> text -> latents -> denoise -> decode -> frames.

Nothing here calls torch.distributed; parallel execution is applied from wan_dist.distributed.
"""
