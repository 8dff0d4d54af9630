"""Process start-up and teardown of wan-dist, side by side with the floors (issue 20).

Every measurement is a fresh process, timed from just before it is spawned. Per round, in a rotated order:

  torch       `python -c "import torch"`: start -> torch imported (the floor every wan-dist process pays), and wall
  libraries   `python -c` importing the library classes a tiny run uses (torch, diffusers' Wan DiT / VAE / scheduler,
              transformers' UMT5 + tokenizer, PyAV): start -> imported (the floor of any script on these libraries)
  floor       bench/pipeline_floor.py: the same video as `run` with nothing around it (load, encode, denoise, decode,
              mp4), ended like a plain script
and for this checkout (`now`) and, with --before DIR, an older checkout of wan-dist (`before`, e.g.
`git archive main | tar -x -C DIR`), in the same rounds:
  help        `wan-dist --help` (wall)
  check       `wan-dist check-checkpoint CKPT --model MODEL` (wall)
  status      `wan-dist status OUT` (wall; on a finished run's out_dir)
  report      `wan-dist report OUT` (wall)
  run         `launch/run.py` one tiny video from a one-row manifest (logger=none): start -> first item started (its
              progress line on stderr), the item (-> its ledger record, wall clock t_ns), last item -> process exit,
              wall; and the sidecar's stage times
  run_wandb   the same with logger=wandb (offline files: the demo's logger), only with --wandb
  rerun       `launch/run.py` again over a finished run's out_dir (nothing to make: every row is skipped), wall

Each process also gives its CPU time (user + sys, from wait4): on a shared machine it moves far less than wall time.
Min and median over the rounds; ratios are of the minima (the minimum is the least disturbed run). `--imports`
instead runs each command once under `python -X importtime` and prints where the import time goes (top-level
packages by self time, and the largest imports).

    .venv/bin/python bench/startup.py [--rounds 5] [--threads 1] [--wandb] [--before DIR] [--json out.json]
    .venv/bin/python bench/startup.py --imports [--before DIR]
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
STAGES = ("text_encode", "denoise", "vae_decode", "save")     # the sidecar's stage timings, per item
MARK = "import sys, time; print('IMPORTED', time.time_ns(), file=sys.stderr, flush=True)"
LIBRARIES = ("import torch; from diffusers import WanTransformer3DModel, AutoencoderKLWan, UniPCMultistepScheduler; "
             "from transformers import UMT5EncoderModel, AutoTokenizer; import av")


def py(importtime: bool) -> list[str]:
    return [sys.executable, *(["-X", "importtime"] if importtime else [])]


def cli(tree: Path, *args: str, importtime: bool = False) -> list[str]:
    """`wan-dist ARGS` as that checkout's console script runs it (its own wan_dist.cli, first on sys.path)."""
    code = (f"import sys; sys.path.insert(0, {str(tree)!r}); import wan_dist.cli as c; sys.argv[0] = 'wan-dist'; "
            "sys.exit(c.console() if hasattr(c, 'console') else c.main())")
    return [*py(importtime), "-c", code, *args]


def run_cmd(tree: Path, ckpt: Path, manifest: Path, out: Path, a, logger: str = "none",
            importtime: bool = False) -> list[str]:
    return [*py(importtime), str(tree / "launch/run.py"), f"model={a.model}", f"ckpt_dir={ckpt}",
            f"manifest={manifest}", f"out_dir={out}", f"sample.steps={a.steps}", f"sample.frame_num={a.frames}",
            f"sample.size={a.size}", f"logger={logger}", "device=cpu", "batch.progress=true"]


def floor_cmd(ckpt: Path, out: Path, a, importtime: bool = False) -> list[str]:
    return [*py(importtime), str(REPO / "bench/pipeline_floor.py"), str(ckpt), str(out / "floor.mp4"),
            f"--model={a.model}", f"--steps={a.steps}", f"--frames={a.frames}", f"--size={a.size}"]


def spawn(cmd: list[str], env: dict) -> dict:
    """Run `cmd`; every stderr line with the wall-clock time (ns) it arrived. Start and exit in the same clock."""
    start = time.time_ns()
    p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env, cwd="/")
    lines = [(time.time_ns(), line) for line in p.stderr]
    _, status, usage = os.wait4(p.pid, 0)            # the child's own CPU time: robust where wall time is not
    end = time.time_ns()
    p.returncode = rc = os.waitstatus_to_exitcode(status)
    if rc != 0:
        tail = "".join(line for _, line in lines[-20:])
        raise RuntimeError(f"{' '.join(cmd)} exited {rc}:\n{tail}")
    return {"start": start, "end": end, "lines": lines, "cpu_s": usage.ru_utime + usage.ru_stime}


def wall(cmd: list[str], env: dict) -> dict:
    r = spawn(cmd, env)
    return {"wall_s": (r["end"] - r["start"]) / 1e9, "cpu_s": r["cpu_s"]}


def imported(code: str, env: dict) -> dict:
    """A process that imports `code` and says when: start -> imported, and its wall (teardown included)."""
    r = spawn([sys.executable, "-c", f"{code}; {MARK}"], env)
    t = next(int(line.split()[1]) for _, line in r["lines"] if line.startswith("IMPORTED "))
    return {"import_s": (t - r["start"]) / 1e9, "wall_s": (r["end"] - r["start"]) / 1e9, "cpu_s": r["cpu_s"]}


def phases(r: dict, first_ns: int, last_ns: int) -> dict:
    return {"wall_s": (r["end"] - r["start"]) / 1e9, "cpu_s": r["cpu_s"],
            "start_to_first_item_s": (first_ns - r["start"]) / 1e9, "item_s": (last_ns - first_ns) / 1e9,
            "last_item_to_exit_s": (r["end"] - last_ns) / 1e9}


def measure_run(cmd: list[str], out: Path, env: dict) -> dict:
    r = spawn(cmd, env)
    first = next(t for t, line in r["lines"] if "video 1/" in line)     # Progress.item_start's line
    last = max(json.loads(line)["t_ns"] for f in (out / "ledger").glob("*.jsonl")
               for line in f.read_text().splitlines() if line.strip())
    (sidecar,) = (out / "videos").glob("*.json")
    stages = json.loads(sidecar.read_text())["timings"]
    return {**phases(r, first, last), **{f"stage {k}_s": stages[k] for k in STAGES}}


def measure_floor(cmd: list[str], env: dict) -> dict:
    r = spawn(cmd, env)
    mark = {line.split()[1]: line.split(maxsplit=2)[2] for _, line in r["lines"] if line.startswith("FLOOR ")}
    stages = json.loads(mark["timings"])
    return {**phases(r, int(mark["item_start"]), int(mark["item_end"])),
            **{f"stage {k}_s": stages.get(k, 0.0) for k in STAGES}}


def summarize(samples: dict[str, list[dict]]) -> dict:
    out = {}
    for name, runs in samples.items():
        out[name] = {k: {"min": round(min(r[k] for r in runs), 3),
                         "median": round(statistics.median(r[k] for r in runs), 3)} for k in runs[0]}
    return out


def ratios(s: dict, trees: list[str]) -> dict:
    def m(name, key):
        return s[name][key]["min"]
    r = {"libraries import / torch import": m("libraries", "import_s") / m("torch", "import_s")}
    for t in trees:
        r[f"{t}: run start_to_first_item / torch import"] = m(f"{t} run", "start_to_first_item_s") / m("torch",
                                                                                                      "import_s")
        r[f"{t}: run start_to_first_item / libraries import"] = (m(f"{t} run", "start_to_first_item_s")
                                                                 / m("libraries", "import_s"))
        r[f"{t}: run wall / floor wall"] = m(f"{t} run", "wall_s") / m("floor", "wall_s")
        if f"{t} run_wandb" in s:
            r[f"{t}: run_wandb wall / floor wall"] = m(f"{t} run_wandb", "wall_s") / m("floor", "wall_s")
    if len(trees) == 2:
        for k in ("help", "check", "status", "report", "run", "rerun", "run_wandb"):
            if f"now {k}" in s:
                r[f"now / before: {k} wall"] = m(f"now {k}", "wall_s") / m(f"before {k}", "wall_s")
                r[f"now / before: {k} cpu"] = m(f"now {k}", "cpu_s") / m(f"before {k}", "cpu_s")
        r["now / before: run start_to_first_item"] = (m("now run", "start_to_first_item_s")
                                                      / m("before run", "start_to_first_item_s"))
        r["now / before: run last_item_to_exit"] = (m("now run", "last_item_to_exit_s")
                                                    / m("before run", "last_item_to_exit_s"))
    return {k: round(v, 3) for k, v in r.items()}


def benchmark(a, work: Path, ckpt: Path, manifest: Path, trees: dict[str, Path], env: dict) -> dict:
    samples: dict[str, list[dict]] = collections.defaultdict(list)
    n = 0

    def fresh() -> Path:
        nonlocal n
        n += 1
        return work / f"out{n}"

    def one_run(tree, logger):
        out = fresh()
        return measure_run(run_cmd(tree, ckpt, manifest, out, a, logger), out, env)

    jobs = {"torch": lambda: imported("import torch", env),
            "libraries": lambda: imported(LIBRARIES, env),
            "floor": lambda: measure_floor(floor_cmd(ckpt, work, a), env)}
    for name, tree in trees.items():
        ref = fresh()                                 # a finished run for `wan-dist status` / `report`
        measure_run(run_cmd(tree, ckpt, manifest, ref, a), ref, env)
        jobs.update({f"{name} help": lambda t=tree: wall(cli(t, "--help"), env),
                     f"{name} check": lambda t=tree: wall(cli(t, "check-checkpoint", str(ckpt), "--model", a.model),
                                                          env),
                     f"{name} status": lambda t=tree, r=ref: wall(cli(t, "status", str(r)), env),
                     f"{name} report": lambda t=tree, r=ref: wall(cli(t, "report", str(r)), env),
                     f"{name} run": lambda t=tree: one_run(t, "none"),
                     f"{name} rerun": lambda t=tree, r=ref: wall(run_cmd(t, ckpt, manifest, r, a), env)})
        if a.wandb:
            jobs[f"{name} run_wandb"] = lambda t=tree: one_run(t, "wandb")
    names = list(jobs)
    load = [os.getloadavg()[0]]
    for k in range(a.rounds):
        order = names[k % len(names):] + names[:k % len(names)]       # rotate: no measure always runs first
        for name in order:
            samples[name].append(jobs[name]())
        load.append(os.getloadavg()[0])
        print(f"round {k + 1}/{a.rounds} done (load average {load[-1]:.2f})", file=sys.stderr, flush=True)
    s = summarize(samples)
    return {"results": s, "ratios": ratios(s, list(trees)), "load_average_1min": [round(x, 2) for x in load]}


# -- where the import time goes ---------------------------------------------------------------------------------
# named groups of modules, self time summed (a module counts in the first group that matches)
ZOO = ("diffusers.models.transformers.", "diffusers.models.autoencoders.", "diffusers.models.unets.",
       "diffusers.models.controlnets.")
GROUPS = {
    "diffusers' model zoo (model modules a Wan run does not use)":
        lambda n: n.startswith(ZOO) and "_wan" not in n and not n.endswith((".transformers", ".autoencoders")),
    "torch._dynamo / fx / export / _inductor / sympy / mpmath (pulled in by diffusers)":
        lambda n: n.startswith(("torch._dynamo", "torch.fx", "torch.export", "torch._inductor", "torch._functorch",
                                "torch.utils._sympy", "sympy", "mpmath")),
    "transformers (package init + models index)": lambda n: n.split(".")[0] == "transformers",
}


def import_profile(lines: list[str], top: int) -> dict:
    rows = []
    for line in lines:
        if line.startswith("import time:") and "self [us]" not in line:
            self_us, cum_us, name = line[len("import time:"):].split("|")
            rows.append((int(self_us), int(cum_us), name.rstrip("\n")))
    by_pkg = collections.Counter()
    for self_us, _, name in rows:
        by_pkg[name.strip().split(".")[0]] += self_us
    total = sum(r[0] for r in rows)
    roots = sorted((r for r in rows if not r[2].startswith("  ")), key=lambda r: -r[1])[:top]   # imported at top
    groups = collections.Counter()
    for self_us, _, name in rows:
        g = next((g for g, match in GROUPS.items() if match(name.strip())), None)
        if g:
            groups[g] += self_us
    return {"total_self_s": round(total / 1e6, 3),
            "groups_self_s": {g: round(groups[g] / 1e6, 3) for g in GROUPS},
            "packages_by_self_s": [(p, round(us / 1e6, 3)) for p, us in by_pkg.most_common(top)],
            "top_level_imports_cumulative_s": [(name.strip(), round(cum / 1e6, 3)) for _, cum, name in roots]}


def imports(a, work: Path, ckpt: Path, manifest: Path, trees: dict[str, Path], env: dict) -> dict:
    cmds = {"torch": [*py(True), "-c", "import torch"],
            "floor": floor_cmd(ckpt, work, a, importtime=True)}
    for name, tree in trees.items():
        ref = work / f"ref-{name}"
        measure_run(run_cmd(tree, ckpt, manifest, ref, a), ref, env)
        cmds.update({f"{name} help": cli(tree, "--help", importtime=True),
                     f"{name} check": cli(tree, "check-checkpoint", str(ckpt), "--model", a.model, importtime=True),
                     f"{name} status": cli(tree, "status", str(ref), importtime=True),
                     f"{name} report": cli(tree, "report", str(ref), importtime=True),
                     f"{name} run": run_cmd(tree, ckpt, manifest, work / f"imp-{name}", a, importtime=True)})
    out = {}
    for name, cmd in cmds.items():
        r = spawn(cmd, env)
        out[name] = {"wall_s": round((r["end"] - r["start"]) / 1e9, 3),
                     **import_profile([line for _, line in r["lines"]], a.top)}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--model", default="tiny-t2v")
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--frames", type=int, default=9)
    ap.add_argument("--size", default="64*64")
    ap.add_argument("--wandb", action="store_true", help="also time runs with logger=wandb (offline)")
    ap.add_argument("--before", type=Path, default=None,
                    help="another wan-dist checkout to measure in the same rounds (e.g. main before a change)")
    ap.add_argument("--threads", type=int, default=None, help="OMP_NUM_THREADS for every process (default: unset)")
    ap.add_argument("--imports", action="store_true", help="where the import time goes (-X importtime), once each")
    ap.add_argument("--top", type=int, default=12)
    ap.add_argument("--json", type=Path, default=None)
    a = ap.parse_args()
    sys.path.insert(0, str(REPO))
    from wan_dist.models.tiny import write_tiny_checkpoint
    trees = {"now": REPO, **({"before": a.before.resolve()} if a.before else {})}
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "WANDB_SILENT": "true"}
    if a.threads:             # one thread: no OpenMP spinning against the other jobs of a shared machine
        env["OMP_NUM_THREADS"] = str(a.threads)
    env.pop("WANDB_API_KEY", None)                                  # offline W&B only
    env.pop("PYTHONPATH", None)                                     # each checkout puts itself first on sys.path
    with tempfile.TemporaryDirectory(prefix="wan-dist-startup-") as d:
        work = Path(d)
        ckpt = write_tiny_checkpoint(a.model, work / "ckpt")
        manifest = work / "prompts.csv"
        manifest.write_text("id,prompt\ncat,a cat walking on grass\n")
        res = (imports if a.imports else benchmark)(a, work, ckpt, manifest, trees, env)
    res = {"machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}",
           "date": time.strftime("%Y-%m-%d %H:%M"), "model": a.model, "steps": a.steps, "frames": a.frames,
           "size": a.size, "threads": a.threads, "rounds": 1 if a.imports else a.rounds,
           "trees": {k: str(v) for k, v in trees.items()},
           **res}
    text = json.dumps(res, indent=2)
    print(text)
    if a.json:
        a.json.write_text(text + "\n")


if __name__ == "__main__":
    main()
