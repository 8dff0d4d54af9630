"""`wan-dist status OUT_DIR [--manifest M] [--json]`: where a run, or a Slurm array of runs, into OUT_DIR stands.

Reads files only (no torch, no model; cheap to start): the manifest's ids (manifest.read_ids, named exactly as the
runner names them), every writer's ledger, the claims, config.yaml. Each manifest id is exactly one of

    done     its newest ledger record is ok, and its mp4 and sidecar exist
    running  a live claim holds it: the owner's pid is alive (same host), or its heartbeat is younger than
             batch.claim_timeout_s (another host); the claims a live run holds are exactly the ids it is making
    failed   its newest record is failed (and no live claim holds it)
    pending  anything else: never tried, stopped mid-item, a dead writer's stale claim

Per array task, when the records say the run was an array (ledger records and claims carry {"array": {"task",
"tasks", "replicas"}}, batch.work.writer_tags): the same four counts over the task's share (array_task_of), with the
Slurm job of each task and its latest activity. Throughput: ok items per minute over the recent ones (those finished
within the hour before the newest, at most 100), all writers together; ETA = (pending + running) / throughput.
The manifest defaults to the one config.yaml names. Exit: 0 when every manifest id is done, 1 when not, 2 on a usage
error (no such out_dir, no manifest, a bad manifest).
"""
from __future__ import annotations

import json
import sys
import time
from collections import Counter
from pathlib import Path

from .claims import Claims
from .ledger import Ledger
from .work import array_task_of

STATES = ("done", "running", "failed", "pending")
RECENT_WINDOW_S = 3600
RECENT_MAX = 100


def _config(root: Path) -> dict:
    try:
        import yaml
        doc = yaml.safe_load((root / "config.yaml").read_text(encoding="utf-8"))
        return doc if isinstance(doc, dict) else {}
    except (OSError, ValueError, ImportError):
        return {}
    except Exception:          # yaml.YAMLError: a damaged config.yaml only costs the defaults
        return {}


def _manifest_path(root: Path, conf: dict, given: str | None) -> Path:
    if given:
        return Path(given)
    for p in (conf.get("manifest_path"), (conf.get("config") or {}).get("manifest")):
        if p and Path(p).is_file():
            return Path(p)
    raise ValueError(f"{root}: config.yaml names no manifest that exists here; give it: --manifest prompts.csv")


def _claims(root: Path, timeout_s: float) -> dict[str, dict]:
    """id -> the live claim's content (array tag included) for every live claim in out_dir/claims/."""
    reader = Claims(root, owner="wan-dist-status", timeout_s=timeout_s)
    out = {}
    for item_id in reader.ids():
        h = reader.holder(item_id)
        if h is not None and reader.live(h):
            out[item_id] = h.data
    return out


def collect(out_dir: str | Path, manifest: str | Path | None = None, now: float | None = None) -> dict:
    """The status as a dict (what --json prints); ValueError for usage errors."""
    from .manifest import read_ids
    root = Path(out_dir).resolve()
    if not root.is_dir():
        raise ValueError(f"out_dir={str(out_dir)!r}: no such directory")
    conf = _config(root)
    timeout_s = float(((conf.get("config") or {}).get("batch") or {}).get("claim_timeout_s") or 300.0)
    mpath = _manifest_path(root, conf, str(manifest) if manifest else None)
    ids = read_ids(mpath)
    records = Ledger(root, "wan-dist-status").records()
    latest = {r["id"]: r for r in records}
    live = _claims(root, timeout_s)
    now = time.time() if now is None else now

    def state(item_id: str) -> str:
        rec = latest.get(item_id)
        if rec and rec.get("status") == "ok" and all((root / "videos" / f"{item_id}{s}").is_file()
                                                    for s in (".mp4", ".json")):
            return "done"
        if item_id in live:
            return "running"
        return "failed" if rec and rec.get("status") == "failed" else "pending"

    states = {item_id: state(item_id) for _, item_id in ids}
    counts = Counter(states.values())
    # array tasks: the newest record or claim that says so gives K and the replicas per task
    tagged = [r["array"] for r in records if isinstance(r.get("array"), dict)] + \
        [c["array"] for c in live.values() if isinstance(c.get("array"), dict)]
    tasks = None
    if tagged:
        k_tasks, replicas = int(tagged[-1]["tasks"]), int(tagged[-1]["replicas"])
        tasks = [{"task": k, "total": 0, **{s: 0 for s in STATES}, "jobs": [], "last_activity_s": None}
                 for k in range(k_tasks)]
        for index, item_id in ids:
            t = tasks[array_task_of(index, k_tasks, replicas)]
            t["total"] += 1
            t[states[item_id]] += 1
        for r in records:
            a = r.get("array")
            if isinstance(a, dict) and 0 <= int(a.get("task", -1)) < k_tasks:
                t = tasks[int(a["task"])]
                if r.get("slurm_job") and r["slurm_job"] not in t["jobs"]:
                    t["jobs"].append(r["slurm_job"])
                t["last_activity_s"] = round(now - r["t_ns"] / 1e9, 1)
    oks = [r["t_ns"] / 1e9 for r in records if r.get("status") == "ok" and r["id"] in states]
    recent = [t for t in oks if t >= (oks[-1] if oks else 0) - RECENT_WINDOW_S][-RECENT_MAX:]
    rate = (len(recent) - 1) / (recent[-1] - recent[0]) * 60 if len(recent) >= 2 and recent[-1] > recent[0] else None
    left = counts["pending"] + counts["running"]
    return {"out_dir": str(root), "manifest": str(mpath), "total": len(ids), **{s: counts[s] for s in STATES},
            "complete": counts["done"] == len(ids), "tasks": tasks,
            "throughput_per_min": round(rate, 3) if rate else None, "recent_items": len(recent),
            "last_item_s_ago": round(now - oks[-1], 1) if oks else None,
            "eta_s": round(left / rate * 60, 1) if rate and left else (0.0 if not left else None),
            "failed_ids": sorted(i for i, s in states.items() if s == "failed")[:20]}


def _dur(s: float | None) -> str:
    if s is None:
        return "-"
    s = int(round(s))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"


def format_status(st: dict) -> str:
    lines = [f"out_dir {st['out_dir']}   manifest {st['manifest']} ({st['total']} ids)",
             "   ".join(f"{s} {st[s]}" for s in STATES)]
    if st["tasks"]:
        lines.append(f"array tasks ({len(st['tasks'])}):")
        lines.append("  task  total  done  running  failed  pending  last activity  slurm job(s)")
        for t in st["tasks"]:
            ago = f"{_dur(t['last_activity_s'])} ago" if t["last_activity_s"] is not None else "-"
            lines.append(f"  {t['task']:>4}  {t['total']:>5}  {t['done']:>4}  {t['running']:>7}  {t['failed']:>6}  "
                         f"{t['pending']:>7}  {ago:>13}  {','.join(t['jobs']) or '-'}")
    if st["throughput_per_min"]:
        left = st["pending"] + st["running"]
        lines.append(f"throughput {st['throughput_per_min']:.2f} items/min over the last {st['recent_items']} items "
                     f"(last one {_dur(st['last_item_s_ago'])} ago); ETA {_dur(st['eta_s'])} for {left} left")
    if st["complete"]:
        lines.append("complete: every manifest id is done")
    elif st["failed"] and not (st["pending"] or st["running"]):
        lines.append(f"not complete: {st['failed']} failed ({', '.join(st['failed_ids'])}); "
                     "rerun with batch.retry_failed=true to retry them")
    else:
        lines.append("not complete")
    return "\n".join(lines)


def add_args(p) -> None:
    p.add_argument("out_dir", help="the run's out_dir (shared by every task of a Slurm array)")
    p.add_argument("--manifest", help="the manifest to check against (default: the one out_dir/config.yaml names)")
    p.add_argument("--json", action="store_true", help="print the status as one JSON object")


def run_cli(args) -> int:
    try:
        st = collect(args.out_dir, args.manifest)
    except ValueError as e:
        print(f"wan-dist status: error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(st) if args.json else format_status(st))
    return 0 if st["complete"] else 1
