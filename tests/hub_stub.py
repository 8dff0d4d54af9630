"""Loopback stand-ins for the hub HTTP endpoints `wan-dist download` uses, serving files a test wrote.

`HfStub`: the Hugging Face Hub as huggingface_hub 2.4 reads it (read in its source: hf_api.model_info,
file_download.get_hf_file_metadata / http_get, utils/_http.hf_raise_for_status):
  GET  /api/models/{repo}/revision/{rev}?blobs=True  -> {"id", "sha", "siblings": [{rfilename, size, blobId, lfs}]}
  HEAD /{repo}/resolve/{rev}/{path}                  -> ETag (git blob sha1, or sha256 for LFS), X-Repo-Commit,
                                                        X-Linked-Etag + X-Linked-Size (LFS), Content-Length
  GET  /{repo}/resolve/{rev}/{path}                  -> the bytes; `Range: bytes=N-` -> 206 + Content-Range
  (cdn=True: HEAD/GET /resolve of an LFS file -> 302 to /lfs/{sha256} on a second server, another origin)
  errors carry X-Error-Code (RepoNotFound, RevisionNotFound, EntryNotFound) like the real Hub.
`MsStub`: the ModelScope endpoints of modelscope-hub 0.5.1 (_legacy_api.py, _download.py):
  GET  /api/v1/models/{repo}/repo/files?Revision=&Recursive= -> {"Code": 200, "Data": {"Files": [{Path, Size,
                                                               Sha256, Type}]}}
  GET  /api/v1/models/{repo}/repo?Revision=&FilePath=         -> the bytes, Range as above
Both count every request and can fail one transfer on purpose: `drop_after[path] = n` sends n bytes of the next
GET of path then closes the connection; `hold_after[path] = n` sends n bytes then stalls until `release` is set.
Ports are chosen by the OS (127.0.0.1:0).
"""
from __future__ import annotations

import hashlib
import json
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlparse

LFS_SUFFIXES = (".safetensors", ".pth", ".model", "tokenizer.json")  # what .gitattributes sends to LFS in Wan repos


def read_tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


class _Stub:
    def __init__(self, repo: str, files: dict[str, bytes]):
        self.repo, self.files = repo, dict(files)
        self.commit = hashlib.sha1(json.dumps(sorted(self.files)).encode()).hexdigest()
        self.requests: list[dict] = []
        self.drop_after: dict[str, int] = {}
        self.hold_after: dict[str, int] = {}
        self.held, self.release = threading.Event(), threading.Event()
        self._lock = threading.Lock()
        self.servers: list[ThreadingHTTPServer] = []
        self.url = self._serve()

    def _serve(self) -> str:
        """Another server on an OS-chosen loopback port (another origin) with the same routes; returns its url."""
        server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        server.daemon_threads = True
        self.servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}"

    def __enter__(self):
        for server in self.servers:
            threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
        return self

    def __exit__(self, *exc):
        self.release.set()
        for server in self.servers:
            server.shutdown()
            server.server_close()

    def gets(self, path: str) -> list[str | None]:
        """The Range header (None = whole file) of every GET of `path`'s bytes, in order."""
        return [r["range"] for r in self.requests if r["method"] == "GET" and r["file"] == path]

    def file_gets(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for r in self.requests:
            if r["method"] == "GET" and r["file"]:
                out[r["file"]] = out.get(r["file"], 0) + 1
        return out

    def _record(self, **kw) -> None:
        with self._lock:
            self.requests.append(kw)

    def route(self, h: "BaseHTTPRequestHandler", method: str) -> None:
        raise NotImplementedError

    def _handler(self):
        stub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, like the real hubs

            def do_GET(self):
                stub.route(self, "GET")

            def do_HEAD(self):
                stub.route(self, "HEAD")

            def log_message(self, *args):  # keep test output clean
                pass

        return Handler

    # -- responses --------------------------------------------------------------------------------------------------
    @staticmethod
    def send_json(h, status: int, body, headers=None) -> None:
        data = json.dumps(body).encode()
        h.send_response(status)
        for k, v in {"Content-Type": "application/json", "Content-Length": str(len(data)), **(headers or {})}.items():
            h.send_header(k, v)
        h.end_headers()
        if h.command != "HEAD":
            h.wfile.write(data)

    def send_file(self, h, method: str, path: str, headers: dict) -> None:
        data = self.files[path]
        start, status = 0, 200
        rng = h.headers.get("Range")
        if method == "GET" and rng and rng.startswith("bytes=") and rng.endswith("-"):
            start, status = int(rng[6:-1]), 206
        if start >= len(data) and status == 206:
            return self.send_json(h, 416, {"error": "range not satisfiable"})
        body = data[start:]
        h.send_response(status)
        headers = {**headers, "Accept-Ranges": "bytes", "Content-Length": str(len(body)),
                   "Content-Type": "application/octet-stream"}
        if status == 206:
            headers["Content-Range"] = f"bytes {start}-{len(data) - 1}/{len(data)}"
        for k, v in headers.items():
            h.send_header(k, v)
        h.end_headers()
        if method == "HEAD":
            return
        with self._lock:
            drop, hold = self.drop_after.pop(path, None), self.hold_after.pop(path, None)
        cut = drop if drop is not None else hold
        if cut is None:
            h.wfile.write(body)
            return
        h.wfile.write(body[:cut])
        h.wfile.flush()
        if hold is not None:
            self.held.set()
            self.release.wait(60)
        h.close_connection = True
        try:
            h.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


class HfStub(_Stub):
    """With cdn=True, /resolve of an LFS file answers 302 to a second server (another origin, like the Hub's CDN
    or its Xet bridge) with the file's headers on the redirect itself, as the real Hub does."""

    def __init__(self, repo: str, files: dict[str, bytes], cdn: bool = False):
        super().__init__(repo, files)
        self.unlisted: set[str] = set()  # files the hub does not have (neither listed nor served)
        self.unserved: set[str] = set()  # listed, but /resolve answers 404 (an inconsistent mirror)
        self.cdn_url = self._serve() if cdn else None

    @staticmethod
    def is_lfs(path: str) -> bool:
        return path.endswith(LFS_SUFFIXES)

    def etag(self, path: str) -> str:
        data = self.files[path]
        if self.is_lfs(path):
            return hashlib.sha256(data).hexdigest()
        return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()

    def siblings(self) -> list[dict]:
        out = []
        for path, data in sorted(self.files.items()):
            if path in self.unlisted:
                continue
            s = {"rfilename": path, "size": len(data), "blobId": hashlib.sha1(path.encode()).hexdigest()}
            if self.is_lfs(path):
                s["lfs"] = {"size": len(data), "sha256": self.etag(path), "pointerSize": 134}
            else:
                s["blobId"] = self.etag(path)
            out.append(s)
        return out

    def route(self, h, method: str) -> None:
        url = urlparse(h.path)
        parts = [unquote(p) for p in url.path.split("/")[1:]]
        auth = h.headers.get("authorization")
        if self.cdn_url and h.server is self.servers[1]:  # the CDN: /lfs/<sha256>, signed urls need no token
            path = next((p for p in self.files if self.is_lfs(p) and parts == ["lfs", self.etag(p)]), None)
            self._record(method=method, file=path, range=h.headers.get("Range"), auth=auth, path=url.path, cdn=True)
            if path is None:
                return self.send_json(h, 404, {"error": "no such object"})
            return self.send_file(h, method, path, {"ETag": f'"{self.etag(path)}"'})
        if parts[:2] == ["api", "models"]:
            self._record(method=method, file=None, range=None, auth=auth, path=url.path)
            repo, rest = "/".join(parts[2:4]), parts[4:]
            if repo != self.repo:
                return self.send_json(h, 404, {"error": "Repository not found"}, {"X-Error-Code": "RepoNotFound"})
            rev = rest[1] if rest[:1] == ["revision"] and len(rest) > 1 else "main"
            if rev not in ("main", self.commit):
                return self.send_json(h, 404, {"error": f"Invalid rev id: {rev}"},
                                      {"X-Error-Code": "RevisionNotFound"})
            return self.send_json(h, 200, {"id": self.repo, "sha": self.commit, "siblings": self.siblings()})
        if len(parts) >= 5 and parts[2] == "resolve":
            repo, rev, path = "/".join(parts[:2]), parts[3], "/".join(parts[4:])
            self._record(method=method, file=path, range=h.headers.get("Range"), auth=auth, path=url.path)
            if repo != self.repo:
                return self.send_json(h, 404, {"error": "Repository not found"}, {"X-Error-Code": "RepoNotFound"})
            if path not in self.files or path in self.unlisted | self.unserved:
                return self.send_json(h, 404, {"error": "Entry not found"},
                                      {"X-Error-Code": "EntryNotFound", "X-Repo-Commit": self.commit})
            etag = self.etag(path)
            headers = {"X-Repo-Commit": self.commit, "ETag": f'"{etag}"'}
            if self.is_lfs(path):
                headers.update({"X-Linked-Etag": f'"{etag}"', "X-Linked-Size": str(len(self.files[path]))})
                if self.cdn_url:
                    h.send_response(302)
                    for k, v in {**headers, "Location": f"{self.cdn_url}/lfs/{etag}", "Content-Length": "0"}.items():
                        h.send_header(k, v)
                    return h.end_headers()
            return self.send_file(h, method, path, headers)
        self._record(method=method, file=None, range=None, auth=auth, path=url.path)
        self.send_json(h, 404, {"error": "not found"})


class MsStub(_Stub):
    def route(self, h, method: str) -> None:
        url = urlparse(h.path)
        parts = [unquote(p) for p in url.path.split("/")[1:]]
        query = {k: v[0] for k, v in parse_qs(url.query).items()}
        auth = h.headers.get("authorization") or h.headers.get("Cookie")
        file = query.get("FilePath") if parts[-1:] == ["repo"] else None
        self._record(method=method, file=file, range=h.headers.get("Range"), auth=auth, path=url.path)
        if parts[:3] != ["api", "v1", "models"] or "/".join(parts[3:5]) != self.repo:
            return self.send_json(h, 404, {"Code": 10010205001, "Message": "not found", "Success": False})
        if parts[5:] == ["repo", "files"]:
            files = [{"Name": p.rsplit("/", 1)[-1], "Path": p, "Size": len(d), "Type": "blob",
                      "Sha256": hashlib.sha256(d).hexdigest()} for p, d in sorted(self.files.items())]
            return self.send_json(h, 200, {"Code": 200, "Data": {"Files": files}, "Success": True})
        if parts[5:] == ["repo"] and file in self.files:
            return self.send_file(h, method, file, {})
        self.send_json(h, 404, {"Code": 10010205001, "Message": "file not found", "Success": False})
