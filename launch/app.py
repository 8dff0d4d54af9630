"""The Gradio app: `python launch/app.py model=t2v-1.3B ckpt_dir=DIR [overrides] [--sample_shift 10 --t5_cpu ...]`.

Models are loaded once; the page (127.0.0.1:7860 by default: ui.host, ui.port) makes one video at a time, saved in
out_dir like a batch item. A setting given on the command line (a Hydra override or the seed's flag spelling) is
shown in the UI with that value, locked. Several GPUs: `wan-dist torchrun --standalone --nproc_per_node N
launch/app.py ... parallel.ulysses=N`: rank 0 serves the page, every rank generates each video. `--help` lists the
flags. Process start-up only: the work is in wan_dist.ui.
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from wan_dist.process import collector_paused  # noqa: E402

with collector_paused():   # torch and the app's own imports: start-up, with the GC paused (wan_dist/process.py)
    from wan_dist.ui.main import main  # noqa: E402

if __name__ == "__main__":
    main()
