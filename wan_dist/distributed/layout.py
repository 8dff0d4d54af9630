"""The parallel layout, checked against the world size before any process group exists (DESIGN §3).

world = dp x cfg x ring x ulysses. Every rule failure is a ValueError naming the field, the value and the rule, so a
bad layout costs no model load and no `init_process_group`. Pure Python: no torch.distributed here.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..models.attention import resolve_backend
from ..models.device import resolve_device
from ..models.registry import get_model
from ..pipeline.sizes import correct_frame_num, parse_size, token_count

@dataclass(frozen=True)
class Layout:
    dp: int
    cfg: int
    ring: int
    ulysses: int
    fsdp: bool
    t5_fsdp: bool

    @property
    def replica_size(self) -> int:
        return self.cfg * self.ring * self.ulysses

    @property
    def sp(self) -> int:
        return self.ring * self.ulysses

    def degrees(self) -> dict:
        return {"dp": self.dp, "cfg": self.cfg, "ulysses": self.ulysses, "ring": self.ring}


def resolve_layout(cfg, world_size: int) -> Layout:
    """dp=-1 becomes whatever the world size leaves; the product must equal the world size."""
    p = cfg.parallel
    inner = p.cfg * p.ulysses * p.ring
    if p.dp == -1:
        if world_size % inner:
            raise ValueError(f"parallel.dp=-1: world size {world_size} is not divisible by cfg x ulysses x ring = "
                             f"{p.cfg} x {p.ulysses} x {p.ring} = {inner}; the product must equal the world size")
        dp = world_size // inner
    else:
        dp = p.dp
    if dp * inner != world_size:
        hint = ""
        if p.fsdp and inner == 1:   # e.g. fsdp=true dp=1 on 2 ranks: the user wants sharding, not a product rule
            hint = (f"; FSDP shards over the ranks of one replica (cfg x ulysses x ring), never over dp: to shard "
                    f"over all {world_size} ranks make them one replica, e.g. parallel.dp=-1 "
                    f"parallel.ulysses={world_size} (see docs/PARALLEL.md)")
        raise ValueError(f"parallel.dp={p.dp}: dp x cfg x ulysses x ring = {dp} x {p.cfg} x {p.ulysses} x {p.ring} = "
                         f"{dp * inner} must equal the world size {world_size} (dp=-1 takes whatever is left){hint}")
    return Layout(dp=dp, cfg=p.cfg, ring=p.ring, ulysses=p.ulysses, fsdp=p.fsdp, t5_fsdp=p.t5_fsdp)


def guidance_on(cfg) -> bool:
    s = cfg.sample
    scales = [s.guide_scale if s.guide_scale is not None else cfg.model.guide_scale]
    if cfg.model.boundary is not None:
        high = s.guide_scale_high if s.guide_scale_high is not None else cfg.model.guide_scale_high
        scales.append(high if high is not None else scales[0])
    return any(g > 1.0 for g in scales)


def nearest_fitting_size(spec, frame_num: int, w: int, h: int, sp: int, sizes=()) -> tuple[int, int] | None:
    """The size closest to (w, h) (sum of |dW| + |dH|) whose token count divides by sp; the official `sizes` when the
    model has a list, else multiples of the VAE stride x patch."""
    if sizes:
        cands = [parse_size(s) for s in sizes]
    else:
        m = spec.size_multiple
        cands = [(cw, ch) for cw in range(max(m, w - 16 * m), w + 16 * m + 1, m) if cw % m == 0
                 for ch in range(max(m, h - 16 * m), h + 16 * m + 1, m) if ch % m == 0]
    fits = [(abs(cw - w) + abs(ch - h), cw, ch) for cw, ch in cands if token_count(spec, frame_num, cw, ch) % sp == 0]
    return (min(fits)[1], min(fits)[2]) if fits else None


def check_tokens(spec, size: tuple[int, int], frame_num: int, sp: int, field: str, sizes=()) -> None:
    """Ulysses/ring split the token sequence evenly: T x h/2 x w/2 must divide by ulysses x ring."""
    if sp == 1:
        return
    w, h = size
    frames, _ = correct_frame_num(frame_num)
    n = token_count(spec, frames, w, h)
    if n % sp:
        near = nearest_fitting_size(spec, frames, w, h, sp, sizes)
        hint = f"; nearest size that fits: {near[0]}*{near[1]}" if near else "; no nearby size fits"
        raise ValueError(f"{field}={w}*{h}: {n} tokens ({frames} frames) must be divisible by ulysses x ring = "
                         f"{sp} to split the sequence evenly{hint}")


def check_speed(cfg, lay: Layout) -> None:
    """Attention backend against device and layout; step-cache and CFG-batch rules that depend on the layout."""
    resolve_backend(cfg.attention_backend, resolve_device(cfg.device), ulysses=lay.ulysses, ring=lay.ring)
    if lay.sp > 1:
        check_cache_method(cfg.sample.cache, cfg.sample.cache, lay, "sample.cache")


def check_cache_method(method: str, run_method: str, lay: Layout, field: str) -> None:
    """Under Ulysses/ring every rank of a replica must take the same skip decision, or the all-to-alls of a block one
    rank computes and another skips never match (a hang). FirstBlockCache decides from each rank's own share of the
    activations, so it is refused there; MagCache and TaylorSeer decide from the step schedule, identical on every
    rank. Their block hooks are installed once, inside the context-parallel split, so the method is fixed per run."""
    if lay.sp == 1:
        return
    if method == "first_block":
        raise ValueError(f"{field}='first_block': under parallel.ulysses={lay.ulysses} x parallel.ring={lay.ring} "
                         "each rank holds a share of the tokens and FirstBlockCache would decide per rank from its "
                         "own share (ranks disagree and hang); use mag or taylorseer, which decide by the step "
                         "schedule, or parallel.cfg/dp")
    if method != run_method:
        raise ValueError(f"{field}={method!r}: under parallel.ulysses/ring the step-cache method is fixed per run "
                         f"(sample.cache={run_method!r}); its hooks are installed once, inside the sequence split")


def check_layout(cfg, world_size: int) -> Layout:
    """Every parallel rule that needs no model weights; the worker calls it before any process group exists."""
    spec = get_model(cfg.model.name)
    lay = resolve_layout(cfg, world_size)
    if lay.fsdp and lay.replica_size == 1:
        raise ValueError(f"parallel.fsdp=true: a replica of 1 rank has nothing to shard (world size "
                         f"{world_size} = dp {lay.dp} x cfg 1 x ulysses 1 x ring 1); FSDP shards the DiT over the "
                         "ranks of a replica, so give the replica several ranks: e.g. parallel.ulysses=2 (sequence "
                         "parallel) or parallel.cfg=2 (CFG-parallel), with parallel.dp=-1 taking what is left")
    if spec.num_heads % lay.ulysses:
        raise ValueError(f"parallel.ulysses={lay.ulysses}: must divide the head count of {spec.name} "
                         f"({spec.num_heads})")
    check_speed(cfg, lay)
    if lay.cfg == 2 and not guidance_on(cfg):
        raise ValueError(f"parallel.cfg={lay.cfg}: CFG-parallel needs guidance on (a guide scale > 1.0); with "
                         "guidance off there is no unconditional pass to run on the other half")
    size = parse_size(cfg.sample.size or cfg.model.size, "sample.size")
    frames = cfg.sample.frame_num if cfg.sample.frame_num is not None else cfg.model.frame_num
    field = "sample.size" if cfg.sample.size else "model.size"
    check_tokens(spec, size, frames, lay.sp, field, cfg.model.sizes)
    return lay


def check_items(requests, spec, lay: Layout, sizes=(), run_cache: str = "none") -> None:
    """Per-row check for manifests that override size, frame_num (image-sized rows are checked by the model) or the
    step-cache method."""
    for req in requests:
        if req.image is None:
            check_tokens(spec, tuple(req.size), req.frame_num, lay.sp, f"manifest row {req.id} size", sizes)
        check_cache_method(req.cache, run_cache, lay, f"manifest row {req.id} cache")
