"""Hugging Face source: the repo listing (sizes, LFS sha256, git blob ids) and resumable file transfers.

Built from huggingface_hub's own pieces: `HfApi.model_info(files_metadata=True)` for the listing at one commit,
`hf_hub_url` + `get_hf_file_metadata` (HEAD /resolve: ETag, X-Repo-Commit, X-Linked-Size, redirect location) and
`http_get` for the bytes, which itself retries a dropped connection with a Range request. The token is the
library's (HF_TOKEN or a stored login) and so is the endpoint (HF_ENDPOINT) unless one is passed in.

Why not `hf_hub_download`: huggingface_hub 2.4 writes every attempt to a fresh uuid-named `.incomplete` file and
deletes it on failure, so a killed or failed run restarts a 10 GB shard from zero. Here a partial file is kept
under DIR/.cache/wan-dist/partial/, named by the content hash the listing gives, and the next run asks only for
the rest (Range: bytes=N-).
"""
from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import urlparse

from wan_dist.download.plan import (HASH_CHUNK, USAGE, Cancelled, DownloadError, Listing, RemoteFile, new_hash,
                                    remove_file)

PARTIAL_DIR = ".cache/wan-dist/partial"
# http_get writes in pieces of constants.DOWNLOAD_CHUNK_SIZE (10 MiB); a kill loses the piece in flight, so a
# smaller piece keeps resume points fine-grained. 1 MiB costs nothing measurable next to the network.
WRITE_CHUNK = 1 << 20


class HfSource:
    name = "huggingface"

    def __init__(self, endpoint: str | None = None):
        from huggingface_hub import constants

        constants.DOWNLOAD_CHUNK_SIZE = min(constants.DOWNLOAD_CHUNK_SIZE, WRITE_CHUNK)
        if "HF_HUB_DISABLE_TELEMETRY" not in os.environ:
            # with telemetry on, huggingface_hub 2.4 fetches an "agent harnesses" registry on the first request and
            # caches it in HF_HOME: off, nothing is written outside DIR (the user agent just loses those fields)
            constants.HF_HUB_DISABLE_TELEMETRY = True
        self.endpoint = (endpoint or constants.ENDPOINT).rstrip("/")

    def describe(self) -> str:
        return f"Hugging Face at {self.endpoint}"

    # -- listing ---------------------------------------------------------------------------------------------------
    def listing(self, repo: str, revision: str | None) -> Listing:
        import httpx2
        from huggingface_hub import HfApi
        from huggingface_hub.errors import (GatedRepoError, HfHubHTTPError, HFValidationError, OfflineModeIsEnabled,
                                            RepositoryNotFoundError, RevisionNotFoundError)
        where = self.describe()
        try:
            info = HfApi(endpoint=self.endpoint).model_info(repo, revision=revision, files_metadata=True)
        except RevisionNotFoundError:
            raise DownloadError(f"--revision {revision!r}: no such branch, tag or commit in {repo} on {where}",
                                USAGE) from None
        except GatedRepoError:
            raise DownloadError(f"{repo} on {where} is gated: accept its terms on the model page, then set HF_TOKEN "
                                f"to a token of that account") from None
        except RepositoryNotFoundError:
            raise DownloadError(f"--repo {repo!r}: not found on {where} (a private repo also needs HF_TOKEN)",
                                USAGE) from None
        except HfHubHTTPError as e:
            raise DownloadError(f"listing {repo} on {where} failed: {_first_line(e)}") from None
        except HFValidationError as e:  # e.g. "--" or ".." in the repo id
            raise DownloadError(f"--repo {repo!r}: {_first_line(e)}", USAGE) from None
        except (httpx2.HTTPError, OfflineModeIsEnabled) as e:
            raise DownloadError(f"cannot reach {where} ({type(e).__name__}: {_first_line(e)}); check the network, "
                                f"HF_ENDPOINT and HF_HUB_OFFLINE") from None
        if not info.sha:
            raise DownloadError(f"{where} did not say which commit {repo}@{revision or 'main'} is; "
                                f"is HF_ENDPOINT a Hub-compatible endpoint?")
        files = {}
        for s in info.siblings or []:
            size = s.lfs.size if s.lfs else s.size
            if size is None:
                raise DownloadError(f"{where} gave no size for {repo}/{s.rfilename}; is HF_ENDPOINT a Hub-compatible "
                                    f"endpoint?")
            files[s.rfilename] = RemoteFile(s.rfilename, int(size), sha256=s.lfs.sha256 if s.lfs else None,
                                            git_oid=None if s.lfs else s.blob_id)
        return Listing(repo, revision or "main", info.sha, files)

    # -- partial files ---------------------------------------------------------------------------------------------
    def partial_path(self, root: Path, rf: RemoteFile) -> Path:
        return root / PARTIAL_DIR / f"{rf.path}.{rf.key[:16]}.incomplete"

    def partial_bytes(self, root: Path, rf: RemoteFile) -> int:
        try:
            n = self.partial_path(root, rf).stat().st_size
        except OSError:
            return 0
        return n if n <= rf.size else 0

    def drop_stale_partials(self, root: Path, keep: list[RemoteFile]) -> None:
        """Delete partials of other content (an older revision, a file no longer wanted): never resumable."""
        base = root / PARTIAL_DIR
        wanted = {self.partial_path(root, rf) for rf in keep}
        for p in base.rglob("*.incomplete") if base.is_dir() else []:
            if p not in wanted:
                remove_file(p)

    # -- transfer --------------------------------------------------------------------------------------------------
    def fetch(self, root: Path, listing: Listing, rf: RemoteFile, bar_class, cancel) -> None:
        """Bring `rf` to root/rf.path, resuming its partial; verified (size, hash) before it is renamed in place."""
        from huggingface_hub import get_hf_file_metadata, hf_hub_url
        from huggingface_hub.file_download import http_get
        from huggingface_hub.utils import build_hf_headers

        url = hf_hub_url(listing.repo, rf.path, revision=listing.commit, endpoint=self.endpoint)
        meta = get_hf_file_metadata(url, endpoint=self.endpoint, retry_on_errors=True)
        if meta.size is not None and meta.size != rf.size:
            raise DownloadError(f"{rf.path}: the listing says {rf.size} bytes, the file endpoint {meta.size}; the "
                                f"repo changed while downloading? rerun")
        target, headers = url, build_hf_headers()
        if meta.xet_file_data is None and meta.location and meta.location != url:
            target = meta.location  # the CDN url of exactly this version, as hf_hub_download does
            if _origin(target) != _origin(url):
                headers.pop("authorization", None)  # a signed storage url: the token stays on the hub
        part = self.partial_path(root, rf)
        part.parent.mkdir(parents=True, exist_ok=True)
        # unbuffered: every piece http_get writes reaches the OS at once, so a killed run resumes after it
        with open(part, "a+b", buffering=0) as raw:
            w = _HashingWriter(raw, rf, cancel)
            if w.tell() < rf.size:
                http_get(target, w, resume_size=w.tell(), headers=headers, expected_size=rf.size,
                         displayed_filename=rf.path, tqdm_class=bar_class)
            os.fsync(raw.fileno())
            problem = w.problem()
        if problem:
            remove_file(part)
            raise DownloadError(f"{rf.path}: the downloaded content is not the hub's file ({problem}); deleted it, "
                                f"rerun to fetch it again")
        dest = root / rf.path
        dest.parent.mkdir(parents=True, exist_ok=True)
        os.replace(part, dest)


class _HashingWriter:
    """The file object handed to http_get: hashes what it writes, so a finished 10 GB shard is not read again."""

    def __init__(self, raw, rf: RemoteFile, cancel):
        self.raw, self.rf, self.cancel = raw, rf, cancel
        end = raw.seek(0, os.SEEK_END)
        if end > rf.size:  # cannot be this file's prefix
            raw.truncate(0)
            end = 0
        self._rehash(end)

    def _rehash(self, n: int) -> None:
        self.h, self.want = new_hash(self.rf)
        self.raw.seek(0)
        while n > 0 and (chunk := self.raw.read(min(HASH_CHUNK, n))):
            if self.h is not None:
                self.h.update(chunk)
            n -= len(chunk)
        self.raw.seek(0, os.SEEK_END)

    def write(self, data) -> int:
        if self.cancel.is_set():
            raise Cancelled()
        view = memoryview(data)
        while view:  # an unbuffered write may take fewer bytes than given
            view = view[self.raw.write(view):]
        if self.h is not None:
            self.h.update(data)
        return len(data)

    def tell(self) -> int:
        return self.raw.tell()

    def seek(self, *args) -> int:
        return self.raw.seek(*args)

    def truncate(self, size=None) -> int:
        # http_get rewinds and truncates when a server ignores the Range request and sends the whole file
        n = self.raw.truncate(size)
        self._rehash(n)
        return n

    def problem(self) -> str | None:
        size = self.raw.seek(0, os.SEEK_END)
        if size != self.rf.size:
            return f"{size} bytes, expected {self.rf.size}"
        if self.h is not None and self.h.hexdigest() != self.want:
            return f"hash {self.h.hexdigest()[:12]}..., expected {self.want[:12]}..."
        return None


def _origin(url: str) -> tuple:
    u = urlparse(url)
    return u.scheme, (u.hostname or "").lower(), u.port or {"http": 80, "https": 443}.get(u.scheme)


def _first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
