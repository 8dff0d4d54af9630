"""What a model needs from its hub repo, and which of those files a directory already holds intact.

The file set comes from the registry (`wan_dist.models.registry`), the same facts `check-checkpoint` validates:
per DiT folder (the root, or each expert folder) `config.json` + `diffusion_pytorch_model.safetensors.index.json`
+ the shards that index names (or one `diffusion_pytorch_model.safetensors`), the T5 file, the model's VAE file and
every file of the tokenizer folder. Verification compares with the hub's listing: sizes always, content hashes
unless told not to (sha256 of LFS files, git blob sha1 of the small files kept in git itself).

No hub client is imported here: this module is shared by the Hugging Face and ModelScope sources.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from wan_dist.models.registry import DIT_WEIGHTS, T5_FILE, TOKENIZER_DIR, ModelSpec

# exit codes of `wan-dist download` (documented in its --help and the README)
OK, INCOMPLETE, USAGE, IOERR, INTERRUPTED = 0, 1, 2, 74, 130

HASH_CHUNK = 8 << 20


class Cancelled(Exception):
    """Raised inside a transfer (from its write or progress callback) once the user interrupted the run."""


class DownloadError(Exception):
    """A failure with the exit code it maps to; the message names what failed and what to do."""

    def __init__(self, message: str, code: int = INCOMPLETE):
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class RemoteFile:
    path: str                    # repo-relative, "/"-separated
    size: int
    sha256: str | None = None    # LFS files on Hugging Face; every file on ModelScope
    git_oid: str | None = None   # git blob sha1 of a file kept in git (not LFS) on Hugging Face

    @property
    def key(self) -> str:
        """Content identity: names the resumable partial file, so a partial of other content is never resumed."""
        return self.sha256 or self.git_oid or f"size{self.size}"


@dataclass
class Listing:
    repo: str
    revision: str                # as asked (branch, tag or commit)
    commit: str                  # what it resolved to: every file is fetched at this commit
    files: dict[str, RemoteFile] = field(default_factory=dict)


def safe_relpath(path: str) -> str:
    """`path` if it stays inside the checkpoint directory; the hub's listing and index decide where we write."""
    p = PurePosixPath(path)
    if not path or p.is_absolute() or ".." in p.parts or "\\" in path or p.parts[0] == ".cache":
        raise DownloadError(f"the hub names the file {path!r}, which would land outside the checkpoint directory "
                            f"(or in its .cache/); refusing to write it")
    return p.as_posix()


def _dit_prefix(sub: str) -> str:
    return f"{sub}/" if sub else ""


def index_paths(spec: ModelSpec) -> list[str]:
    """The safetensors index of each DiT folder: fetched first, because it names the shards."""
    return [f"{_dit_prefix(sub)}{DIT_WEIGHTS}.safetensors.index.json" for sub in spec.dit_dirs()]


def shards_from_index(index_file: Path, index_path: str) -> list[str]:
    """Repo paths of the shards an index file names (they live next to it)."""
    try:
        weight_map = json.loads(index_file.read_text())["weight_map"]
        if not isinstance(weight_map, dict) or not weight_map:
            raise ValueError("weight_map is empty or not an object")
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise DownloadError(f"{index_path}: the hub's index cannot be read ({type(e).__name__}: {e})") from None
    folder = index_path.rpartition("/")[0]
    names = sorted(set(weight_map.values()))
    bad = [n for n in names if not isinstance(n, str) or "/" in n or "\\" in n or n.startswith(".")]
    if bad:
        raise DownloadError(f"{index_path}: names shard {bad[0]!r} outside its folder")
    return [f"{folder}/{n}" if folder else n for n in names]


def needed_files(spec: ModelSpec, listing: Listing,
                 shards: dict[str, list[str]]) -> tuple[list[str], list[tuple[str, str]]]:
    """(repo paths the model needs that the hub has, [(path, what it is)] it needs that the hub lacks).

    `shards` maps each index path the hub has to the shard paths it names. Mirrors checkpoint validation: an
    index wins over a single weights file, as in diffusers' from_pretrained.
    """
    have, lacking = [], []

    def want(path: str, why: str) -> None:
        if path in listing.files:
            have.append(path)
        else:
            lacking.append((path, why))

    for sub, index in zip(spec.dit_dirs(), index_paths(spec)):
        pre = _dit_prefix(sub)
        want(f"{pre}config.json", "DiT config")
        single = f"{pre}{DIT_WEIGHTS}.safetensors"
        if index in listing.files:
            have.append(index)
            for shard in shards.get(index, []):
                want(shard, f"DiT shard named by {index}")
        elif single in listing.files:
            have.append(single)
        else:
            lacking.append((index, f"DiT weights index; no {single} either"))
    want(T5_FILE, "T5 encoder")
    want(spec.vae_file, f"Wan{spec.vae_version} VAE")
    tok = sorted(p for p in listing.files if p.startswith(TOKENIZER_DIR + "/"))
    if tok:
        have += tok
    else:
        lacking.append((f"{TOKENIZER_DIR}/", "tokenizer folder: no file under it"))
    return [safe_relpath(p) for p in dict.fromkeys(have)], lacking


# -- verification ------------------------------------------------------------------------------------------------
def new_hash(rf: RemoteFile):
    """(hash object primed for `rf`, expected hex digest) or (None, None) when the hub gave no hash."""
    if rf.sha256:
        return hashlib.sha256(), rf.sha256.lower()
    if rf.git_oid:
        h = hashlib.sha1()  # git's blob id: sha1 over "blob <size>\0" + content
        h.update(f"blob {rf.size}\0".encode())
        return h, rf.git_oid.lower()
    return None, None


def check_local(root: Path, rf: RemoteFile, hashes: bool, on_bytes=None) -> str | None:
    """Why `root/rf.path` is not the hub's file ("missing", a size or hash mismatch), or None when it is."""
    path = root / rf.path
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return "missing"
    if not path.is_file():
        return "not a regular file"
    if size != rf.size:
        return f"size {size} bytes, the hub's file has {rf.size}"
    h, want = new_hash(rf) if hashes else (None, None)
    if h is None:
        return None
    with open(path, "rb") as f:
        while chunk := f.read(HASH_CHUNK):
            h.update(chunk)
            if on_bytes:
                on_bytes(len(chunk))
    got = h.hexdigest()
    kind = "sha256" if rf.sha256 else "git blob sha1"
    return None if got == want else f"{kind} {got[:12]}..., the hub's file has {want[:12]}..."


def free_space(root: Path) -> int:
    probe = root
    while not probe.exists():  # the directory may not exist yet: ask its nearest existing parent
        probe = probe.parent
    return shutil.disk_usage(probe).free


def check_free_space(root: Path, need: int, reclaim: int) -> None:
    """Raise (exit 74) when `need` bytes will not fit; `reclaim` = bytes of damaged files deleted before fetching."""
    free = free_space(root)
    if need > free + reclaim:
        raise DownloadError(
            f"not enough free space in {root}: the missing files need {human(need)}, the filesystem has {human(free)} "
            f"free" + (f" (+{human(reclaim)} from damaged files that would be replaced)" if reclaim else "")
            + "; free some space or choose another DIR. Nothing was changed.", IOERR)


def human(n: int) -> str:
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= scale:
            return f"{n / scale:.{2 if unit == 'GiB' else 1}f} {unit}"
    return f"{n} B"


def remove_file(path: Path) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
