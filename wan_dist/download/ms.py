"""ModelScope source, through the official client `modelscope-hub` (`pip install 'wan-dist[modelscope]'`).

The Wan-AI repos have the same names and files on ModelScope. The client lists a repo with the size and sha256 of
every file, and its `download_file` resumes a partial `<file>.incomplete` (next to the file, inside DIR) with a Range
request, checks size and sha256, then renames it into place. Its lock files, its session id and every other file it
keeps go under DIR/.cache/modelscope/, so nothing is written outside DIR; the token comes from
MODELSCOPE_API_TOKEN (a `modelscope login` of the user's home is therefore not used), the endpoint from
MODELSCOPE_ENDPOINT (default https://modelscope.cn). ModelScope revisions are branches or tags (default "master");
the listing gives no commit id, so files are fetched at the revision as named.

The client is `modelscope-hub` (2 MB, needs `cryptography`), not the 70 MB `modelscope` package built on it.
"""
from __future__ import annotations

import os
from pathlib import Path

from wan_dist.download.plan import INCOMPLETE, USAGE, DownloadError, Listing, RemoteFile

CACHE_DIR = ".cache/modelscope"
INSTALL_HINT = "pip install 'wan-dist[modelscope]' (the client modelscope-hub==0.5.1)"


class MsSource:
    name = "modelscope"
    reports_resumed_bytes = True  # its progress callback also counts the bytes a partial file already held

    def __init__(self, root: Path):
        try:
            from modelscope_hub import HubApi, HubConfig
        except ImportError as e:
            raise DownloadError(f"--source modelscope needs the ModelScope client, which is not installed ({e}); "
                                f"{INSTALL_HINT}", USAGE) from None
        cache = root / CACHE_DIR
        self.cache = cache
        # every path the client may write, inside DIR (its defaults are ~/.cache/modelscope and ~/.modelscope)
        config = HubConfig(cache_dir=cache, config_dir=cache / "home")
        self.api, self.endpoint = HubApi(config), config.endpoint

    def describe(self) -> str:
        return f"ModelScope at {self.endpoint}"

    def listing(self, repo: str, revision: str | None) -> Listing:
        from modelscope_hub import AuthenticationError, HubError, NotExistError, PermissionDeniedError
        where, rev = self.describe(), revision or "master"
        try:
            entries = self.api.list_repo_files(repo, "model", revision=rev, recursive=True)
        except NotExistError:
            raise DownloadError(f"--repo {repo!r} at revision {rev!r}: not found on {where} (a private repo also needs "
                                f"MODELSCOPE_API_TOKEN)", USAGE) from None
        except (AuthenticationError, PermissionDeniedError) as e:
            raise DownloadError(f"{where} refused to list {repo} ({e}); set MODELSCOPE_API_TOKEN") from None
        except HubError as e:
            raise DownloadError(f"cannot list {repo} on {where} ({type(e).__name__}: {e}); check the network and "
                                f"MODELSCOPE_ENDPOINT") from None
        files = {e.path: RemoteFile(e.path, int(e.size), sha256=(e.sha256 or "").lower() or None)
                 for e in entries if not e.is_dir and e.path}
        if not files:
            raise DownloadError(f"{where} lists no files in {repo} at revision {rev!r}")
        return Listing(repo, rev, rev, files)

    def partial_bytes(self, root: Path, rf: RemoteFile) -> int:
        try:  # the client's own partial file: <file>.incomplete next to the file
            n = os.stat(root / f"{rf.path}.incomplete").st_size
        except OSError:
            return 0
        return n if n <= rf.size else 0

    def drop_stale_partials(self, root: Path, keep: list[RemoteFile]) -> None:
        """Nothing to do: the client restarts a partial whose size or resume answer does not fit."""

    def fetch(self, root: Path, listing: Listing, rf: RemoteFile, bar_class, cancel) -> None:
        from modelscope_hub import FileIntegrityError, NotExistError

        class _Progress:  # the client instantiates each callback class per file: (file_path, file_size)
            def __init__(self, filename, file_size):
                self.bar = bar_class(desc=filename, total=file_size, initial=0)

            def update(self, n):
                self.bar.update(n)

            def end(self):
                self.bar.__exit__(None, None, None)

        try:
            # _cancel_event: the client's own way to stop a transfer between chunks (a callback that raised
            # would be retried as a network error)
            self.api.downloader.download_file(
                listing.repo, "model", rf.path, revision=listing.commit, local_dir=root, cache_dir=self.cache,
                expected_sha256=rf.sha256, file_size=rf.size, progress_callbacks=[_Progress], _cancel_event=cancel)
        except NotExistError:
            raise DownloadError(f"{rf.path}: {self.describe()} has no such file in {listing.repo} at "
                                f"{listing.revision}, though its listing named it") from None
        except FileIntegrityError as e:
            raise DownloadError(f"{rf.path}: the downloaded content is not the hub's file ({e}); rerun",
                                INCOMPLETE) from None
