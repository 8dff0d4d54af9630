"""Arguments of `wan-dist download` (argparse only: the hub clients are imported when it runs)."""
from __future__ import annotations

import argparse

EPILOG = """\
files: exactly what the model's registry entry needs: per DiT folder (the root, or high_noise_model/ and
  low_noise_model/) config.json, diffusion_pytorch_model.safetensors.index.json and the shards it names; the T5
  file models_t5_umt5-xxl-enc-bf16.pth; the VAE (Wan2.1_VAE.pth or Wan2.2_VAE.pth); the google/umt5-xxl/ folder.
  Then the checkpoint is validated as by `wan-dist check-checkpoint DIR --model MODEL`.

rerun: the same command verifies what DIR holds (sizes, and sha256 / git blob hashes from the hub's listing) and
  fetches only missing or damaged files; a file whose hash was verified before (in DIR or while it was fetched) and
  that has not changed since (size, mtime, ctime, inode) is not read again (--rehash reads it); an interrupted file
  (Ctrl-C, SIGTERM, a killed job, a dropped connection) resumes from its partial file in DIR/.cache/ with a Range
  request. A free-space check runs before any download.

environment:
  HF_TOKEN              Hugging Face token (private or gated repos); sent to the hub, never printed or written
  HF_ENDPOINT           Hugging Face endpoint or mirror, e.g. https://hf-mirror.com (huggingface_hub's own setting)
  MODELSCOPE_API_TOKEN  ModelScope token (--source modelscope)
  MODELSCOPE_ENDPOINT   ModelScope endpoint (default https://modelscope.cn)

exit codes:
  0    every needed file is present, matches the hub, and the checkpoint validates
  1    incomplete: the hub lacks needed files (named), a transfer failed (rerun to resume), or validation found
       problems (listed)
  2    usage error: unknown model, a tiny model without --repo, bad --repo/--revision/--workers, repo not found,
       ModelScope client not installed
  74   disk or I/O problem: not enough free space (checked before fetching), DIR not writable, write errors
  130  stopped by Ctrl-C or SIGTERM; finished files are kept, partial ones resume on the next run

manual alternative: hf download Wan-AI/Wan2.2-TI2V-5B --local-dir DIR   (then wan-dist check-checkpoint)
"""


def add_args(p: argparse.ArgumentParser) -> None:
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.epilog = EPILOG
    from wan_dist.models.registry import REAL_MODELS, TINY_MODELS  # plain data: no torch, no hub client

    p.add_argument("model", help=f"registry model name: {', '.join(REAL_MODELS)} (the registry knows their Wan-AI "
                   f"repos), or {', '.join(TINY_MODELS)} together with --repo")
    p.add_argument("dir", help="checkpoint directory to fill (created if absent); nothing is written outside it")
    p.add_argument("--source", choices=("huggingface", "modelscope"), default="huggingface",
                   help="hub to download from (default: huggingface); the Wan-AI repos have the same names on both")
    p.add_argument("--repo", metavar="OWNER/NAME", help="repo id instead of the registry's (required for tiny "
                   "models, which have none)")
    p.add_argument("--revision", metavar="R", help="branch, tag or commit (default: main on Hugging Face, master "
                   "on ModelScope); on Hugging Face a branch is pinned to its commit for the whole run")
    p.add_argument("--workers", type=int, default=8, metavar="N", help="files transferred (and hashed) in "
                   "parallel (default: 8)")
    check = p.add_mutually_exclusive_group()
    check.add_argument("--sizes-only", action="store_true", help="check files already in DIR by size only, "
                       "skipping their hashes (fast on a slow filesystem, but misses corruption that keeps the size)")
    check.add_argument("--rehash", action="store_true", help="hash every file already in DIR again, even those "
                       "verified before and unchanged since (DIR/.cache/wan-dist/verified.json): after a disk fault")
    p.add_argument("--dry-run", action="store_true", help="verify DIR and report what would be fetched and the free "
                   "space, without downloading (only the small DiT index files are fetched: they name the shards)")


def run_cli(args) -> int:
    from wan_dist.download.run import download
    return download(args.model, args.dir, source=args.source, repo=args.repo, revision=args.revision,
                    workers=args.workers, hashes=not args.sizes_only, rehash=args.rehash, dry_run=args.dry_run)
