"""A server on the loopback address that speaks the part of the Hugging Face Hub's HTTP protocol that
huggingface_hub's snapshot_download and hf_hub_download use, serving repositories from folders:

    GET  /api/{models,datasets}/<repo>/revision/<revision>     repository info: commit (sha), files
    GET  /api/{models,datasets}/<repo>/tree/<revision>[/<path>] the file listing (type, path, size, oid)
    HEAD /<repo>/resolve/<revision>/<file>                     file metadata (X-Repo-Commit, ETag, size)
    GET  /<repo>/resolve/<revision>/<file>                     the file (datasets: /datasets/<repo>/...)

A revision is the repository's commit or a branch in `refs`. Every request is recorded in `requests`.
Point huggingface_hub at it with HF_ENDPOINT=<server.endpoint>.
"""

from __future__ import annotations

import hashlib
import json
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlparse


@dataclass
class Repository:
    kind: str  # "model" or "dataset"
    repo_id: str
    commit: str
    folder: Path  # the files of that commit
    refs: dict[str, str] = field(default_factory=dict)

    def files(self) -> list[str]:
        return sorted(p.relative_to(self.folder).as_posix() for p in self.folder.rglob("*") if p.is_file())

    def resolve(self, revision: str) -> str | None:
        if revision == self.commit:
            return self.commit
        return {"main": self.commit, **self.refs}.get(revision)


def git_blob_id(data: bytes) -> str:
    """The id git (and the Hub, for files not in LFS) gives a file's contents."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


class HubServer:
    def __init__(self, repositories: list[Repository]):
        self.repositories = {(repo.kind, repo.repo_id): repo for repo in repositories}
        self.requests: list[str] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def do_HEAD(self):
                server.handle(self, body=False)

            def do_GET(self):
                server.handle(self, body=True)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def __enter__(self) -> HubServer:  # noqa: PYI034
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    # ------------------------------------------------------------------------------------------

    def find(self, kind: str, path: str) -> tuple[Repository, str] | None:
        """The repository a path starts with, and the rest of the path."""
        for (repo_kind, repo_id), repo in self.repositories.items():
            if repo_kind == kind and (path == repo_id or path.startswith(repo_id + "/")):
                return repo, path[len(repo_id) + 1 :]
        return None

    def handle(self, request: BaseHTTPRequestHandler, body: bool) -> None:
        path = unquote(urlparse(request.path).path)
        self.requests.append(f"{request.command} {request.path}")
        if path.startswith("/api/"):
            kind_plural, _, rest = path[len("/api/") :].partition("/")
            found = self.find(kind_plural.removesuffix("s"), rest)
            if found is None:
                return self.reply(request, 404, {"error": "Repository not found"}, body)
            repo, rest = found
            action, _, rest = rest.partition("/")
            revision, _, subpath = rest.partition("/")
            if not action:  # /api/models/<repo>: the default branch
                action, revision = "revision", "main"
            commit = repo.resolve(revision)
            if commit is None:
                return self.reply(request, 404, {"error": f"Revision Not Found: {revision}"}, body,
                                  {"X-Error-Code": "RevisionNotFound"})
            if action == "revision":
                info = {"id": repo.repo_id, "sha": commit, "siblings": [{"rfilename": f} for f in repo.files()]}
                return self.reply(request, 200, info, body)
            if action == "tree":
                entries = [
                    {"type": "file", "path": name, "size": (repo.folder / name).stat().st_size,
                     "oid": git_blob_id((repo.folder / name).read_bytes())}
                    for name in repo.files()
                    if not subpath or name.startswith(subpath.rstrip("/") + "/")
                ]
                return self.reply(request, 200, entries, body)
            return self.reply(request, 404, {"error": f"unknown API {action}"}, body)

        kind = "model"
        if path.startswith("/datasets/"):
            kind, path = "dataset", path[len("/datasets") :]
        found = self.find(kind, path.lstrip("/"))
        if found is None or not found[1].startswith("resolve/"):
            return self.reply(request, 404, {"error": "Repository not found"}, body,
                              {"X-Error-Code": "RepoNotFound"})
        repo, rest = found
        revision, _, name = rest[len("resolve/") :].partition("/")
        commit = repo.resolve(revision)
        file = repo.folder / name
        if commit is None or not file.is_file():
            return self.reply(request, 404, {"error": "Entry not found"}, body, {"X-Error-Code": "EntryNotFound"})
        data = file.read_bytes()
        headers = {"X-Repo-Commit": commit, "ETag": f'"{git_blob_id(data)}"'}
        self.send(request, 200, data, body, headers)

    def reply(self, request, status: int, payload, body: bool, headers: dict | None = None) -> None:
        data = json.dumps(payload).encode()
        self.send(request, status, data, body, {"Content-Type": "application/json", **(headers or {})})

    @staticmethod
    def send(request, status: int, data: bytes, body: bool, headers: dict) -> None:
        request.send_response(status)
        for key, value in headers.items():
            request.send_header(key, value)
        request.send_header("Content-Length", str(len(data)))
        request.end_headers()
        if body:
            request.wfile.write(data)
