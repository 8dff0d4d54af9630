"""`wan-dist download` against loopback stubs of the Hugging Face and ModelScope HTTP endpoints (tests/hub_stub.py).

The stubs serve the tiny-t2v-moe checkpoint the project writes (two expert folders, sharded DiTs, T5, VAE,
tokenizer) plus files the model does not need. The subprocess tests run the real console script with HF_ENDPOINT
and HF_TOKEN in the environment and HOME pointed at an empty scratch directory, so they also show that the token
reaches the hub but no output or file, and that nothing is written outside DIR.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from shutil import _ntuple_diskusage as shutil_usage

import pytest

from hub_stub import HfStub, MsStub, read_tree
from wan_dist import cli
from wan_dist.download.plan import Listing, RemoteFile, needed_files
from wan_dist.download.run import download
from wan_dist.models.registry import REAL_MODELS, get_model

REPO = "wan-dist/tiny-moe"
TOKEN = "hf_wanDistTestToken0123456789"
MODEL = "tiny-t2v-moe"
VAE = "Wan2.1_VAE.pth"
T5 = "models_t5_umt5-xxl-enc-bf16.pth"
SHARD = "high_noise_model/diffusion_pytorch_model-00001-of-00002.safetensors"
EXTRA = {"README.md": b"# tiny\n", "assets/demo.mp4": b"\0" * 4096, "configuration.json": b"{}"}
BIN = Path(sys.executable).parent / "wan-dist"


@pytest.fixture(scope="module")
def hub_files(tiny_ckpt) -> dict[str, bytes]:
    files = read_tree(tiny_ckpt(MODEL))
    files.pop("README.txt")
    return {**files, **EXTRA}


@pytest.fixture
def needed(hub_files) -> set[str]:
    return set(hub_files) - set(EXTRA)


@pytest.fixture
def hf(hub_files):
    with HfStub(REPO, hub_files) as stub:
        yield stub


@pytest.fixture
def hf_cdn(hub_files):
    """LFS files redirected to a CDN on another origin, as on the real Hub."""
    with HfStub(REPO, hub_files, cdn=True) as stub:
        yield stub


@pytest.fixture
def home(tmp_path) -> Path:
    h = tmp_path / "home"
    h.mkdir()
    return h


def _env(stub, home: Path, **extra) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGING", "MODELSCOPE"))}
    return {**env, "HOME": str(home), "XDG_CACHE_HOME": str(home / ".cache"), "HF_ENDPOINT": stub.url,
            "HF_TOKEN": TOKEN, "PYTHONUNBUFFERED": "1", **extra}


def _run(stub, home, dest, *args, **env) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN), "download", MODEL, str(dest), "--repo", REPO, *args],
                          env=_env(stub, home, **env), capture_output=True, text=True, timeout=300)


def _no_token_anywhere(dest: Path, home: Path, *outputs: str) -> None:
    for text in outputs:
        assert TOKEN not in text
    for p in [*dest.rglob("*"), *home.rglob("*")]:
        assert not p.is_file() or TOKEN.encode() not in p.read_bytes(), p
    assert not any(home.rglob("*")), f"written outside DIR: {sorted(home.rglob('*'))}"


def _checkpoint_files(dest: Path) -> set[str]:
    return {p.relative_to(dest).as_posix() for p in dest.rglob("*") if p.is_file() and ".cache" not in p.parts}


# -- Hugging Face, through the console script ---------------------------------------------------------------------
@pytest.mark.slow
def test_full_download_passes_check_checkpoint_and_rerun_fetches_nothing(hf_cdn, hub_files, needed, home, tmp_path):
    hf, dest = hf_cdn, tmp_path / "ckpt"
    hf.drop_after[VAE] = 2_500_000  # the connection dies mid-file once: huggingface_hub resumes it with a Range
    r = _run(hf, home, dest)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "OK: loadable" in r.stdout and f"fetched {VAE}" in r.stdout
    assert cli.main(["check-checkpoint", str(dest), "--model", MODEL]) == 0
    assert _checkpoint_files(dest) == needed  # exactly the registry's files: no README, assets, configuration.json
    assert all((dest / p).read_bytes() == hub_files[p] for p in needed)
    vae_gets = hf.gets(VAE)
    assert vae_gets[0] is None and len(vae_gets) == 2 and 0 < int(vae_gets[1][6:-1]) <= 2_500_000, vae_gets
    assert set(hf.file_gets()) == needed and not set(EXTRA) & {q["file"] for q in hf.requests}
    hub = [q for q in hf.requests if not q.get("cdn")]
    cdn = [q for q in hf.requests if q.get("cdn")]
    assert all(q["auth"] == f"Bearer {TOKEN}" for q in hub if q["file"] or "models" in q["path"])
    assert cdn and all(q["auth"] is None for q in cdn)  # the token never leaves the hub for the CDN
    assert {q["file"] for q in cdn} == {p for p in needed if HfStub.is_lfs(p)}
    assert not [q for q in hub if q["method"] == "GET" and q["file"] and HfStub.is_lfs(q["file"])]

    before = len(hf.requests)
    r2 = _run(hf, home, dest)
    assert r2.returncode == 0, r2.stdout + r2.stderr
    assert f"{len(needed)} of {len(needed)} needed files already in" in r2.stdout
    assert [q for q in hf.requests[before:] if q["file"]] == []  # verified locally, nothing fetched again
    _no_token_anywhere(dest, home, r.stdout, r.stderr, r2.stdout, r2.stderr)


def _start_and_hold(hf, home, dest, needed, *args) -> subprocess.Popen:
    """Start a download whose VAE transfer stalls after 2.5 MB; return once every other file is in place."""
    hf.hold_after[VAE] = 2_500_000
    proc = subprocess.Popen([str(BIN), "download", MODEL, str(dest), "--repo", REPO, "--workers", "4", *args],
                            env=_env(hf, home, HF_HUB_DOWNLOAD_TIMEOUT="3"), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    partial = dest / ".cache/wan-dist/partial"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        parts = list(partial.glob("*.incomplete")) if partial.is_dir() else []
        if (hf.held.is_set() and all((dest / p).is_file() for p in needed - {VAE})
                and parts and parts[0].stat().st_size > 0):
            return proc
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.1)
    proc.kill()
    pytest.fail(f"download did not reach the stalled VAE: {proc.communicate()}")


@pytest.mark.slow
def test_killed_download_resumes_without_refetching_finished_files(hf, hub_files, needed, home, tmp_path):
    dest = tmp_path / "ckpt"
    proc = _start_and_hold(hf, home, dest, needed)
    proc.kill()  # SIGKILL: no handler runs, as when a node dies or the OOM killer strikes
    out, err = proc.communicate(timeout=30)
    hf.release.set()
    partial = next((dest / ".cache/wan-dist/partial").glob("*.incomplete"))
    assert partial.name.startswith(VAE) and not (dest / VAE).exists()
    kept = partial.stat().st_size
    assert 0 < kept <= 2_500_000
    counts = hf.file_gets()

    r = _run(hf, home, dest)
    assert r.returncode == 0, r.stdout + r.stderr
    assert hf.gets(VAE) == [None, f"bytes={kept}-"]  # the rest of the partial file, nothing else
    assert {p: n for p, n in hf.file_gets().items() if p != VAE} == {p: n for p, n in counts.items() if p != VAE}
    assert all(n == 1 for n in counts.values())
    assert (dest / VAE).read_bytes() == hub_files[VAE] and not partial.exists()
    assert cli.main(["check-checkpoint", str(dest), "--model", MODEL]) == 0
    _no_token_anywhere(dest, home, out, err, r.stdout, r.stderr)


@pytest.mark.slow
def test_sigterm_stops_with_130_and_keeps_the_partial_file(hf, needed, home, tmp_path):
    dest = tmp_path / "ckpt"
    proc = _start_and_hold(hf, home, dest, needed)
    proc.send_signal(signal.SIGTERM)  # what Slurm sends at the time limit
    out, err = proc.communicate(timeout=60)
    hf.release.set()
    assert proc.returncode == 130, out + err
    assert "stopped; finished files are kept and partial ones resume" in err
    assert not (dest / VAE).exists()
    assert [p.stat().st_size > 0 for p in (dest / ".cache/wan-dist/partial").glob("*.incomplete")] == [True]
    _no_token_anywhere(dest, home, out, err)


# -- Hugging Face, in process (the endpoint passed in; the token still from the environment) ---------------------
def _download(stub, dest, capsys, **kw) -> tuple[int, str, str]:
    code = download(MODEL, dest, repo=kw.pop("repo", REPO), endpoint=stub.url, bars=False, **kw)
    out, err = capsys.readouterr()
    return code, out, err


def test_damaged_files_are_detected_and_refetched(hf, hub_files, needed, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    dest = tmp_path / "ckpt"
    assert _download(hf, dest, capsys)[0] == 0
    flipped = bytearray(hub_files[SHARD])
    flipped[len(flipped) // 2] ^= 0xFF  # same size: only the sha256 can tell
    (dest / SHARD).write_bytes(bytes(flipped))
    (dest / T5).write_bytes(hub_files[T5][:1000])  # truncated
    (dest / "low_noise_model/config.json").unlink()  # missing
    cfg = "google/umt5-xxl/tokenizer_config.json"  # a small file kept in git: checked by its git blob sha1
    (dest / cfg).write_bytes(hub_files[cfg].replace(b"{", b"[", 1))
    before = hf.file_gets()

    code, out, _ = _download(hf, dest, capsys, hashes=False)  # --sizes-only: the flipped shard goes unnoticed
    assert code == 0 and f"damaged: {SHARD}" not in out and f"damaged: {T5}: size 1000 bytes" in out
    code, out, err = _download(hf, dest, capsys)
    assert code == 0, out + err
    assert f"damaged: {SHARD}: sha256" in out and f"damaged: {cfg}: git blob sha1" in out
    after = hf.file_gets()
    changed = {SHARD, T5, "low_noise_model/config.json", cfg}
    assert {p for p in after if after[p] != before.get(p)} == changed
    assert all(after[p] == before[p] + 1 for p in changed)  # each fetched once more, in one of the two runs
    assert all((dest / p).read_bytes() == hub_files[p] for p in needed)
    assert "OK: loadable" in out and TOKEN not in out + err


def test_verified_files_are_not_hashed_again_until_they_change(hf, hub_files, needed, tmp_path, capsys, monkeypatch):
    """A rerun over an intact DIR reads no file: each was verified (while fetched) and is unchanged (size, mtime,
    ctime, inode). A file rewritten with the same size and its old mtime put back still has a new ctime: hashed,
    found damaged, fetched again. --rehash hashes everything."""
    from wan_dist.download import run as run_mod
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    dest = tmp_path / "ckpt"
    assert _download(hf, dest, capsys)[0] == 0
    hashed, real = [], run_mod.check_local
    monkeypatch.setattr(run_mod, "check_local", lambda root, rf, hashes, on_bytes=None:
                        hashed.append(rf.path) or real(root, rf, hashes, on_bytes))
    code, out, _ = _download(hf, dest, capsys)
    assert code == 0 and hashed == [], out
    assert f"{len(needed)} of {len(needed)} needed files already in" in out
    assert f"{len(needed)} unchanged since their hash was verified, not read again" in out

    st = os.stat(dest / SHARD)
    flipped = bytearray(hub_files[SHARD])
    flipped[len(flipped) // 2] ^= 0xFF
    (dest / SHARD).write_bytes(bytes(flipped))
    os.utime(dest / SHARD, ns=(st.st_atime_ns, st.st_mtime_ns))     # same size, same mtime
    before = hf.file_gets()
    code, out, _ = _download(hf, dest, capsys)
    assert code == 0 and hashed == [SHARD] and f"damaged: {SHARD}: sha256" in out
    assert hf.file_gets()[SHARD] == before[SHARD] + 1 and (dest / SHARD).read_bytes() == hub_files[SHARD]

    hashed.clear()
    code, out, _ = _download(hf, dest, capsys, rehash=True)
    assert code == 0 and "not read again" not in out
    assert set(hashed) == needed                         # the DiT index files twice (they are checked first)
    assert cli.main(["download", MODEL, str(dest), "--sizes-only", "--rehash"]) == 2   # contradictory
    capsys.readouterr()

    memo = dest / ".cache/wan-dist/verified.json"       # only a cache: a damaged record means hashing again
    memo.write_text('{"%s": 5, "%s": ["x"], "junk": {}}' % (SHARD, T5))
    hashed.clear()
    code, out, _ = _download(hf, dest, capsys)
    assert code == 0 and {SHARD, T5} <= set(hashed) and "OK: loadable" in out


def test_file_missing_on_hub_is_named_and_nothing_else_fetched(hf, tmp_path, capsys):
    missing = "low_noise_model/diffusion_pytorch_model-00002-of-00002.safetensors"
    hf.unlisted |= {missing, T5}
    code, out, err = _download(hf, tmp_path / "ckpt", capsys)
    assert code == 1
    assert f"{REPO} @ main on Hugging Face at {hf.url} lacks 2 file(s) that model {MODEL} needs" in err
    assert f"  {missing}  (DiT shard named by low_noise_model/diffusion_pytorch_model.safetensors.index.json)" in err
    assert f"  {T5}  (T5 encoder)" in err
    assert {p for p in hf.file_gets()} == {f"{d}/diffusion_pytorch_model.safetensors.index.json"
                                           for d in ("high_noise_model", "low_noise_model")}


def test_file_listed_but_not_served_fails_naming_it(hf, tmp_path, capsys):
    hf.unserved.add(VAE)  # the listing names it, the file endpoint answers 404: an inconsistent mirror
    code, out, err = _download(hf, tmp_path / "ckpt", capsys)
    assert code == 1
    assert "1 of 11 file(s) could not be fetched" in err and f"  {VAE}: " in err
    assert "rerun the same command" in err and "OK: loadable" not in out


def test_not_enough_free_space_stops_before_fetching(hf, tmp_path, capsys, monkeypatch):
    from wan_dist.download import plan
    monkeypatch.setattr(plan.shutil, "disk_usage", lambda p: shutil_usage(10**9, 10**9 - 300_000, 300_000))
    code, out, err = _download(hf, tmp_path / "ckpt", capsys)
    assert code == 74
    assert "not enough free space" in err and "the filesystem has 293.0 KiB free" in err
    assert set(hf.file_gets()) <= {f"{d}/diffusion_pytorch_model.safetensors.index.json"
                                   for d in ("high_noise_model", "low_noise_model")}


def test_dry_run_reports_without_fetching_and_one_download_per_dir(hf, tmp_path, capsys):
    dest = tmp_path / "ckpt"
    code, out, err = _download(hf, dest, capsys, dry_run=True)
    assert code == 0, err
    assert "2 of 13 needed files already in" in out and out.count("  would fetch ") == 11
    assert f"  would fetch {VAE} (3.6 MiB)" in out and "dry run: nothing fetched" in out
    assert set(hf.file_gets()) == {f"{d}/diffusion_pytorch_model.safetensors.index.json"  # they name the shards
                                   for d in ("high_noise_model", "low_noise_model")}
    import fcntl
    with open(dest / ".cache/wan-dist/lock") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        code, out, err = _download(hf, dest, capsys)
    assert code == 1 and "another `wan-dist download` is working in" in err


@pytest.mark.parametrize("args, message", [
    (dict(model=MODEL, repo=None), "has no hub repo"),
    (dict(model="t2v-99B"), "unknown model"),
    (dict(model=MODEL, repo="not-a-repo"), "must be OWNER/NAME"),
    (dict(model=MODEL, workers=0), "--workers 0"),
    (dict(model=MODEL, repo="wan-dist/nope"), "--repo 'wan-dist/nope': not found"),
    (dict(model=MODEL, revision="v9"), "--revision 'v9': no such branch"),
])
def test_usage_errors_exit_2(hf, tmp_path, capsys, args, message):
    code = download(args.pop("model"), tmp_path / "ckpt", repo=args.pop("repo", REPO), endpoint=hf.url,
                    bars=False, **args)
    assert code == 2 and message in capsys.readouterr().err


def test_help_documents_every_option(capsys):
    assert cli.main(["download", "--help"]) == 0
    text = capsys.readouterr().out
    sub = cli.build_parser()._subparsers._group_actions[0].choices["download"]
    for action in sub._actions:
        for flag in action.option_strings or [action.dest]:
            assert flag in text, flag
    for needle in ("HF_TOKEN", "HF_ENDPOINT", "MODELSCOPE_API_TOKEN", "hf download", "\n  74 ", "\n  2 ", "\n  1 "):
        assert needle in text, needle


# what `wan-dist` imports at start (no hub client, torch or diffusers): tests/test_startup.py


@pytest.mark.parametrize("model", REAL_MODELS)
def test_needed_files_come_from_the_registry(model):
    spec = get_model(model)
    shards = {d: [f"{d}diffusion_pytorch_model-0000{i}-of-00003.safetensors" for i in (1, 2, 3)]
              for d in ([f"{e}/" for e in spec.experts] or [""])}
    wanted = [spec.vae_file, "models_t5_umt5-xxl-enc-bf16.pth", "google/umt5-xxl/spiece.model"]
    for d, names in shards.items():
        wanted += [f"{d}config.json", f"{d}diffusion_pytorch_model.safetensors.index.json", *names]
    other = ["README.md", "assets/x.png", "Wan2.2_VAE.pth" if spec.vae_version == "2.1" else "Wan2.1_VAE.pth"]
    listing = Listing(spec.repo, "main", "0" * 40, {p: RemoteFile(p, 1) for p in wanted + other})
    have, lacking = needed_files(spec, listing, {f"{d}diffusion_pytorch_model.safetensors.index.json": names
                                                 for d, names in shards.items()})
    assert sorted(have) == sorted(wanted) and lacking == []
    assert spec.repo.startswith("Wan-AI/Wan2.")


# -- ModelScope -----------------------------------------------------------------------------------------------------
def test_modelscope_download_resumes_verifies_and_refetches(hub_files, needed, tmp_path, home, capsys, monkeypatch):
    pytest.importorskip("modelscope_hub",
                        reason="the ModelScope client is an extra: pip install 'wan-dist[modelscope]'")
    ms_token = "ms-wanDistTestToken0123456789"
    with MsStub(REPO, hub_files) as ms:
        monkeypatch.setenv("MODELSCOPE_ENDPOINT", ms.url)
        monkeypatch.setenv("MODELSCOPE_API_TOKEN", ms_token)
        monkeypatch.setenv("HOME", str(home))
        dest = tmp_path / "ckpt"
        ms.drop_after[VAE] = 2_500_000
        assert download(MODEL, dest, source="modelscope", repo=REPO, bars=False) == 0
        vae_gets = ms.gets(VAE)  # the client resumed the dropped transfer
        assert vae_gets[0] is None and len(vae_gets) == 2 and 0 < int(vae_gets[1][6:-1]) <= 2_500_000, vae_gets
        assert _checkpoint_files(dest) == needed
        assert cli.main(["check-checkpoint", str(dest), "--model", MODEL]) == 0
        (dest / SHARD).write_bytes(hub_files[SHARD][::-1])
        before = ms.file_gets()
        assert download(MODEL, dest, source="modelscope", repo=REPO, bars=False) == 0
        after = ms.file_gets()
        assert {p for p in after if after[p] != before.get(p)} == {SHARD}
        assert (dest / SHARD).read_bytes() == hub_files[SHARD]
    out, err = capsys.readouterr()
    assert ms_token not in out + err and not any(ms_token.encode() in p.read_bytes()
                                                 for p in dest.rglob("*") if p.is_file())
    assert not any(home.rglob("*"))
