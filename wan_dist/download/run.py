"""`wan-dist download MODEL DIR`: exactly the files a model needs, fetched in parallel, resumable, verified, checked.

Every run does the same steps, so a rerun fetches only what is missing or damaged:
 1. list the repo at the revision (sizes and hashes; Hugging Face also resolves the revision to a commit, and every
    file is fetched at that commit, so a branch moving mid-download cannot mix two versions);
 2. bring the DiT index file(s) up to date: they name the shards;
 3. derive the needed files from the registry (plan.needed_files) and stop, naming them, when the hub lacks any
    that DIR does not already hold;
 4. check what DIR holds against the listing: size, then content hash (not read again when verified.py remembers
    the file verified and unchanged since);
 5. check the free space for what is missing (partial files already there count as fetched), then fetch;
 6. run check-checkpoint's validation and print its report.
"""
from __future__ import annotations

import errno
import json
import os
import re
import signal
import sys
import threading
from concurrent.futures import ThreadPoolExecutor, as_completed
from contextlib import contextmanager
from pathlib import Path
from typing import NamedTuple
from urllib.parse import urlparse

from wan_dist.download.plan import (INCOMPLETE, INTERRUPTED, IOERR, OK, USAGE, Cancelled, DownloadError, Listing,
                                    check_free_space, check_local, free_space, human, index_paths, needed_files,
                                    remove_file, shards_from_index)
from wan_dist.download.progress import Console
from wan_dist.download.verified import Verified, identity

SOURCES = ("huggingface", "modelscope")
REPO_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*")
STATE_DIR = ".cache/wan-dist"


class Check(NamedTuple):
    hashes: bool = True      # False: --sizes-only
    rehash: bool = False     # True: --rehash (hash every file, whatever verified.json remembers)


LOCAL_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EIO, errno.EACCES, errno.EPERM, errno.EFBIG}


def download(model: str, dest, *, source: str = "huggingface", repo: str | None = None,
             revision: str | None = None, workers: int = 8, hashes: bool = True, rehash: bool = False,
             dry_run: bool = False,
             endpoint: str | None = None, bars: bool | None = None) -> int:
    """Run the download; returns the exit code (0 complete and valid, 1 incomplete, 2 usage, 74 I/O, 130 stopped)."""
    con = Console(sys.stderr.isatty() if bars is None else bars)
    in_main = threading.current_thread() is threading.main_thread()
    old = signal.signal(signal.SIGTERM, _interrupt) if in_main else None
    try:
        return _download(con, model, Path(dest), source, repo, revision, workers, Check(hashes, rehash), dry_run,
                         endpoint)
    except DownloadError as e:
        con.error(str(e))
        return e.code
    except KeyboardInterrupt:
        con.cancel.set()
        con.error("stopped; finished files are kept and partial ones resume: rerun the same command")
        return INTERRUPTED
    except OSError as e:
        if e.errno not in LOCAL_ERRNOS:
            raise
        con.error(f"cannot write in {dest} ({e.strerror}: {e.filename or ''}); finished files are kept")
        return IOERR
    finally:
        if old is not None:
            signal.signal(signal.SIGTERM, old)


def _interrupt(signum, frame):  # SIGTERM (Slurm, kill) stops like Ctrl-C: partial files stay resumable
    raise KeyboardInterrupt


def _download(con, model, root, source, repo, revision, workers, check: Check, dry_run, endpoint) -> int:
    from wan_dist.models.registry import get_model
    try:
        spec = get_model(model)
    except ValueError as e:
        raise DownloadError(str(e), USAGE) from None
    repo = repo or spec.repo
    if not repo:
        raise DownloadError(f"model={model!r}: has no hub repo (tiny models are written locally by `wan-dist "
                            f"tiny-checkpoint`); pass --repo OWNER/NAME", USAGE)
    if not REPO_RE.fullmatch(repo):
        raise DownloadError(f"--repo {repo!r}: must be OWNER/NAME (letters, digits, '.', '_', '-')", USAGE)
    if not 1 <= workers <= 64:
        raise DownloadError(f"--workers {workers}: must be between 1 and 64", USAGE)
    if source not in SOURCES:
        raise DownloadError(f"--source {source!r}: must be one of {', '.join(SOURCES)}", USAGE)
    if root.exists() and not root.is_dir():
        raise DownloadError(f"DIR {str(root)!r}: exists and is not a directory", USAGE)
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DownloadError(f"DIR {str(root)!r}: cannot create it ({e.strerror})", IOERR) from None

    with _dir_lock(root):
        if source == "modelscope":
            from wan_dist.download.ms import MsSource
            src = MsSource(root)
        else:
            from wan_dist.download.hf import HfSource
            src = HfSource(endpoint)
        listing = src.listing(repo, revision)
        pinned = f" = commit {listing.commit}" if listing.commit != listing.revision else ""
        con.say(f"{spec.name}: {repo} @ {listing.revision}{pinned}, from {src.describe()}")

        indexes = [listing.files[p] for p in index_paths(spec) if p in listing.files]
        _sync(con, src, root, listing, indexes, workers, check, dry_run=False, quiet=True)
        shards = {rf.path: shards_from_index(root / rf.path, rf.path) for rf in indexes}
        paths, lacking = needed_files(spec, listing, shards)
        absent = [(p, why) for p, why in lacking if not (root / p).exists()]
        if absent:
            hint = ("\n  (the repo holds model_index.json: it is a *-Diffusers repo, which this command does not "
                    "fetch; use `hf download REPO --local-dir DIR`)" if "model_index.json" in listing.files else "")
            raise DownloadError(f"{repo} @ {listing.revision} on {src.describe()} lacks {len(absent)} file(s) that "
                                f"model {spec.name} needs (only the DiT index files were fetched):\n"
                                + "\n".join(f"  {p}  ({why})" for p, why in absent) + hint, INCOMPLETE)
        for p, why in lacking:
            con.say(f"note: the hub lacks {p} ({why}); keeping the copy in DIR")
        files = [listing.files[p] for p in paths]
        src.drop_stale_partials(root, files)
        _sync(con, src, root, listing, files, workers, check, dry_run)
        if dry_run:
            return OK
        _write_provenance(root, spec.name, src, listing, files)

    from wan_dist.models.checkpoint import validate_checkpoint
    report = validate_checkpoint(root, spec)
    con.say(report.format())
    if not report.ok:
        con.error(f"{root} was downloaded but does not validate as {spec.name} (problems above)")
        return INCOMPLETE
    return OK


def _sync(con, src, root: Path, listing: Listing, files, workers, check: Check, dry_run, quiet=False) -> None:
    """Make root hold `files` exactly as listed: verify, check space, fetch the rest (unless dry_run)."""
    memo = Verified(root / STATE_DIR) if check.hashes else None
    status, remembered = _verify(con, root, files, workers, check, memo)
    odd = [rf.path for rf in files if status[rf.path] == "not a regular file"]
    if odd:  # a directory where a file belongs: not ours to delete
        raise DownloadError(f"{root / odd[0]}: not a regular file, but model files go there; move it away and rerun",
                            USAGE)
    todo = [rf for rf in files if status[rf.path]]
    damaged = [rf for rf in todo if status[rf.path] != "missing"]
    for rf in damaged:
        con.say(f"damaged: {rf.path}: {status[rf.path]}; fetching it again")
    resumed = {rf.path: src.partial_bytes(root, rf) for rf in todo}
    need = sum(rf.size - resumed[rf.path] for rf in todo)
    if not quiet or todo:
        con.say(f"{len(files) - len(todo)} of {len(files)} needed files already in {root} and intact"
                + (f" ({'sizes' if not check.hashes else 'sizes and hashes'} checked"
                   + (f"; {remembered} unchanged since their hash was verified, not read again (--rehash reads "
                      f"them)" if remembered else "") + ")" if files else "")
                + (f"; to fetch: {len(todo)} files, {human(need)}"
                   + (f" (+{human(sum(resumed.values()))} already in partial files)" if any(resumed.values()) else "")
                   if todo else ""))
    check_free_space(root, need, sum((root / rf.path).stat().st_size for rf in damaged))
    if dry_run:
        for rf in todo:
            con.say(f"  would fetch {rf.path} ({human(rf.size)}{', ' + status[rf.path] if rf in damaged else ''})")
        con.say(f"dry run: nothing fetched; {human(free_space(root))} free in {root}")
        return
    for rf in damaged:
        remove_file(root / rf.path)
    failures = _fetch_all(con, src, root, listing, todo, workers, resumed, memo)
    if failures:
        local = [rf for rf, e in failures if isinstance(e, OSError) and e.errno in LOCAL_ERRNOS]
        raise DownloadError(
            f"{len(failures)} of {len(todo)} file(s) could not be fetched (finished ones are kept, partial ones "
            f"resume: rerun the same command):\n" + "\n".join(f"  {rf.path}: {_describe(e)}" for rf, e in failures),
            IOERR if local else INCOMPLETE)


def _verify(con, root: Path, files, workers: int, check: Check, memo: Verified | None) -> tuple[dict, int]:
    """({path: why it is not the hub's file, or None}, how many were taken as verified from `memo` unread)."""
    known = set() if memo is None or check.rehash else {rf.path for rf in files if memo.holds(root, rf)}
    files = [rf for rf in files if rf.path not in known]
    present = [rf for rf in files if (root / rf.path).is_file() and (root / rf.path).stat().st_size == rf.size]
    total = sum(rf.size for rf in present) if check.hashes else 0
    meter = con.meter("verify", total, quiet_below=1 << 30)

    def one(rf):
        def on_bytes(n):
            if con.cancel.is_set():
                raise Cancelled()
            meter.update(n)
        before = identity(root / rf.path)
        return rf.path, (check_local(root, rf, check.hashes, on_bytes), before)

    try:
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="wan-dist-verify") as pool:
            try:
                status = dict(pool.map(one, files))
            except KeyboardInterrupt:
                con.cancel.set()
                pool.shutdown(wait=False, cancel_futures=True)
                raise
    finally:
        meter.close()
    if memo is not None:
        for rf in files:
            why, before = status[rf.path]
            if why is None and (rf.sha256 or rf.git_oid):
                memo.add(root, rf, before)
        memo.save()
    return {**{p: why for p, (why, _) in status.items()}, **{p: None for p in known}}, len(known)


def _fetch_all(con, src, root: Path, listing: Listing, todo, workers: int, resumed, memo: Verified | None) -> list:
    initial = 0 if getattr(src, "reports_resumed_bytes", False) else sum(resumed.values())
    meter = con.meter("download", sum(rf.size for rf in todo), initial=initial, quiet_below=64 << 20)
    bar_class = con.file_bar_class(meter)
    failures = []

    def one(rf):
        if con.cancel.is_set():
            raise Cancelled()
        src.fetch(root, listing, rf, bar_class, con.cancel)

    try:
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="wan-dist-download") as pool:
            # biggest first: the long transfers start at once and the small ones fill the gaps
            futures = {pool.submit(one, rf): rf for rf in sorted(todo, key=lambda rf: -rf.size)}
            try:
                for fut in as_completed(futures):
                    rf, err = futures[fut], fut.exception()
                    if err is None:
                        con.say(f"fetched {rf.path} ({human(rf.size)})")
                        if memo is not None and (rf.sha256 or rf.git_oid):   # the fetch checked its hash
                            memo.add(root, rf)
                    elif not isinstance(err, Cancelled):
                        failures.append((rf, err))
                        con.say(f"failed: {rf.path}: {_describe(err)}")
            except KeyboardInterrupt:
                con.cancel.set()  # running transfers stop at their next write; queued ones never start
                pool.shutdown(wait=False, cancel_futures=True)
                raise
    finally:
        meter.close()
        if memo is not None:
            memo.save()
    return failures


def _describe(e: BaseException) -> str:
    if isinstance(e, DownloadError):
        return str(e)
    if isinstance(e, OSError) and e.errno in LOCAL_ERRNOS:
        return f"cannot write in DIR ({e.strerror}: {e.filename or ''})"
    if type(e).__name__ == "RemoteEntryNotFoundError":
        return "the hub has no such file at this commit, though its listing named it"
    text = (str(e).strip().splitlines() or [""])[0][:300]
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


@contextmanager
def _dir_lock(root: Path):
    """One download per DIR at a time: two would resume the same partial files."""
    import fcntl
    path = root / STATE_DIR / "lock"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        f = open(path, "a")
    except OSError as e:
        raise DownloadError(f"DIR {str(root)!r}: cannot write in it ({e.strerror})", IOERR) from None
    with f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise DownloadError(f"another `wan-dist download` is working in {root}; let it finish (or stop it), "
                                f"then rerun") from None
        yield


def _write_provenance(root: Path, model: str, src, listing: Listing, files) -> None:
    """Which repo, revision and commit DIR came from (no token, no credentials from the endpoint url)."""
    u = urlparse(src.endpoint)
    record = {"model": model, "source": src.name, "endpoint": f"{u.scheme}://{u.hostname}"
              + (f":{u.port}" if u.port else ""), "repo": listing.repo, "revision": listing.revision,
              "commit": listing.commit, "files": {rf.path: {"size": rf.size, "sha256": rf.sha256,
                                                            "git_oid": rf.git_oid} for rf in files}}
    path = root / STATE_DIR / "download.json"
    tmp = path.with_name(f".download.json.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(record, indent=1) + "\n")
    os.replace(tmp, path)
