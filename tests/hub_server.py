"""A local stand-in for the Hugging Face Hub, for tests: the HTTP API subset `huggingface_hub` 2.x speaks when
models are pushed, pulled and snapshot-downloaded, on 127.0.0.1 with the standard library only.

Implemented (model and dataset repos, the latter under `datasets/`; revisions are branch names or commit ids, every
commit is kept):

* `GET /api/whoami-v2`, `POST /api/repos/create` (409 when the repo exists, as the Hub answers; a new repo starts
  with a commit holding `.gitattributes`), `POST /api/validate-yaml` (README metadata)
* `POST /api/models/{repo}/preupload/{rev}`: upload mode per file, `lfs` for weight files (as the Hub's default
  `.gitattributes`) and `regular` otherwise, plus the remote oid so unchanged files are skipped
* `POST /{repo}.git/info/lfs/objects/batch` and `PUT /lfs-objects/{sha256}`: the git-LFS "basic" transfer
* `POST /api/models/{repo}/commit/{rev}`: the NDJSON commit (inline base64 files, LFS pointers, deletions)
* `GET /api/models/{repo}[/revision/{rev}]`, `GET /api/models/{repo}/tree/{rev}[/{path}]`,
  `POST /api/models/{repo}/paths-info/{rev}`
* `HEAD|GET /{repo}/resolve/{rev}/{path}` with `ETag` (git blob sha1, or sha256 with `X-Linked-Etag` for LFS
  files), `X-Repo-Commit`, `Content-Length` / `X-Linked-Size`

Errors carry the Hub's `X-Error-Code` (`RepoNotFound`, `RevisionNotFound`, `EntryNotFound`), so the real client
raises its real exceptions. Anything else is answered 501, naming the request, so a missing endpoint is obvious.
Xet is not implemented: clients must run with `HF_HUB_DISABLE_XET=1`.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import PurePosixPath
from urllib.parse import parse_qs, unquote, urlsplit


LFS_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".h5", ".msgpack", ".onnx")
# Dataset repositories also keep data shards and images in LFS (as the Hub's default dataset `.gitattributes`).
DATASET_LFS_SUFFIXES = (*LFS_SUFFIXES, ".parquet", ".arrow", ".tar", ".jpg", ".jpeg", ".png", ".webp")
REPO_TYPES = {"model": "models", "dataset": "datasets"}
USER = "tester"


def _git_blob_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def _lfs_pointer(sha256: str, size: int) -> bytes:
    return f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {size}\n".encode()


@dataclass(frozen=True)
class Blob:
    data: bytes
    lfs: bool

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()

    @property
    def git_oid(self) -> str:
        """What git stores: the blob itself, or its LFS pointer."""
        return _git_blob_sha1(_lfs_pointer(self.sha256, len(self.data)) if self.lfs else self.data)

    def tree_entry(self, path: str) -> dict:
        entry = {"type": "file", "oid": self.git_oid, "size": len(self.data), "path": path}
        if self.lfs:
            entry["lfs"] = {"oid": self.sha256, "size": len(self.data), "pointerSize": 134}
        return entry


@dataclass
class Repo:
    commits: dict[str, dict[str, Blob]] = field(default_factory=dict)
    branches: dict[str, str] = field(default_factory=dict)

    def snapshot(self, revision: str) -> tuple[str, dict[str, Blob]] | None:
        commit = self.branches.get(revision, revision)
        return (commit, self.commits[commit]) if commit in self.commits else None


class HubError(Exception):
    def __init__(self, status: int, code: str | None, message: str):
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


class HubState:
    """Repositories and LFS objects, in memory, behind one lock."""

    def __init__(self):
        self.lock = threading.Lock()
        self.repos: dict[str, Repo] = {}
        self.lfs_objects: dict[str, bytes] = {}

    def repo(self, repo_id: str) -> Repo:
        if repo_id not in self.repos:
            raise HubError(404, "RepoNotFound", f"repository {repo_id} not found")
        return self.repos[repo_id]

    def snapshot(self, repo_id: str, revision: str) -> tuple[str, dict[str, Blob]]:
        found = self.repo(repo_id).snapshot(unquote(revision))
        if found is None:
            raise HubError(404, "RevisionNotFound", f"revision {revision} not found in {repo_id}")
        return found

    def commit(self, repo_id: str, revision: str, lines: list[dict]) -> str:
        repo = self.repo(repo_id)
        revision = unquote(revision)
        parent = repo.branches.get(revision)
        files = dict(repo.commits[parent]) if parent else {}
        summary = ""
        for line in lines:
            key, value = line["key"], line["value"]
            if key == "header":
                summary = value.get("summary", "")
            elif key == "file":
                files[value["path"]] = Blob(base64.b64decode(value["content"]), lfs=False)
            elif key == "lfsFile":
                if value["oid"] not in self.lfs_objects:
                    raise HubError(422, None, f"LFS object {value['oid']} of {value['path']} was never uploaded")
                files[value["path"]] = Blob(self.lfs_objects[value["oid"]], lfs=True)
            elif key == "deletedFile":
                files.pop(value["path"], None)
            elif key == "deletedFolder":
                prefix = value["path"].rstrip("/") + "/"
                files = {path: blob for path, blob in files.items() if not path.startswith(prefix)}
            else:
                raise HubError(400, None, f"unsupported commit operation {key!r}")
        digest = hashlib.sha1(json.dumps([parent, summary, sorted((p, b.git_oid) for p, b in files.items())]).encode())
        commit = digest.hexdigest()
        repo.commits[commit] = files
        repo.branches[revision] = commit
        return commit


class HubRequestHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as the client expects; every response has a Content-Length
    state: HubState  # set on the subclass the server builds
    base_url: str

    # A dataset repository is addressed as `datasets/{repo}` (API: `/api/datasets/{repo}`), a model as `{repo}`.
    REPO = r"(?P<repo>[\w.-]+/[\w.-]+)"
    API = rf"/api/(?P<kind>models|datasets)/{REPO}"
    FILES = rf"/(?:(?P<kind>datasets)/)?{REPO}"
    ROUTES = (
        ("GET", r"/api/whoami-v2", "whoami"),
        ("POST", r"/api/repos/create", "create_repo"),
        ("POST", r"/api/validate-yaml", "validate_yaml"),
        ("POST", rf"{API}/preupload/(?P<rev>[^/]+)", "preupload"),
        ("POST", rf"{API}/commit/(?P<rev>[^/]+)", "commit"),
        ("GET", rf"{API}(?:/revision/(?P<rev>[^/]+))?", "repo_info"),
        ("GET", rf"{API}/tree/(?P<rev>[^/]+)(?:/(?P<path>.+))?", "tree"),
        ("POST", rf"{API}/paths-info/(?P<rev>[^/]+)", "paths_info"),
        ("POST", rf"{FILES}\.git/info/lfs/objects/batch", "lfs_batch"),
        ("PUT", r"/lfs-objects/(?P<oid>[0-9a-f]{64})", "lfs_upload"),
        ("GET", rf"{FILES}/resolve/(?P<rev>[^/]+)/(?P<path>.+)", "resolve"),
        ("HEAD", rf"{FILES}/resolve/(?P<rev>[^/]+)/(?P<path>.+)", "resolve"),
    )

    def log_message(self, format, *args):  # noqa: A002 - the base class's signature
        pass  # quiet: pytest shows the client's errors, which name the URL

    def do_GET(self):
        self._dispatch("GET")

    def do_HEAD(self):
        self._dispatch("HEAD")

    def do_POST(self):
        self._dispatch("POST")

    def do_PUT(self):
        self._dispatch("PUT")

    def _dispatch(self, method: str) -> None:
        url = urlsplit(self.path)
        self.query = parse_qs(url.query)
        self.body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        for route_method, pattern, handler in self.ROUTES:
            match = re.fullmatch(pattern, url.path)
            if route_method == method and match:
                arguments = {k: v for k, v in match.groupdict().items() if v is not None}
                if "repo" in arguments:  # the state keys dataset repositories by their URL path
                    kind = arguments.pop("kind", "models")
                    arguments["repo"] = arguments["repo"] if kind == "models" else f"datasets/{arguments['repo']}"
                try:
                    with self.state.lock:
                        getattr(self, handler)(**arguments)
                except HubError as error:
                    self._send_json({"error": error.message}, error.status, error_code=error.code)
                return
        self._send_json({"error": f"not implemented by the test hub: {method} {self.path}"}, 501)

    def _send(self, status: int, body: bytes, headers: dict[str, str] | None = None, send_body: bool = True) -> None:
        self.send_response(status)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        if "Content-Length" not in (headers or {}):
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if send_body and self.command != "HEAD":
            self.wfile.write(body)

    def _send_json(self, payload, status: int = 200, error_code: str | None = None) -> None:
        headers = {"Content-Type": "application/json"}
        if error_code:
            headers["X-Error-Code"] = error_code
        if status >= 400:
            headers["X-Error-Message"] = payload.get("error", "")
        self._send(status, json.dumps(payload).encode(), headers)

    # ---- endpoints ----------------------------------------------------------------------------------------------
    def whoami(self):
        self._send_json({"type": "user", "name": USER, "orgs": [], "auth": {"accessToken": {"role": "write"}}})

    def create_repo(self):
        payload = json.loads(self.body)
        repo_id = f"{payload.get('organization') or USER}/{payload['name']}"
        repo_type = payload.get("type") or "model"
        if repo_type not in REPO_TYPES:
            raise HubError(400, None, f"the test hub hosts model and dataset repositories, not {repo_type!r}")
        key = repo_id if repo_type == "model" else f"datasets/{repo_id}"
        if key in self.state.repos:
            self._send_json({"error": f"You already created this {repo_type} repo", "url": f"{self.base_url}/{key}"}, 409)
            return
        self.state.repos[key] = Repo()
        # Like the Hub, a new repository starts with one commit holding the LFS rules, so `main` exists.
        suffixes = LFS_SUFFIXES if repo_type == "model" else DATASET_LFS_SUFFIXES
        gitattributes = "".join(f"*{suffix} filter=lfs diff=lfs merge=lfs -text\n" for suffix in suffixes)
        initial = {"content": base64.b64encode(gitattributes.encode()).decode(), "path": ".gitattributes"}
        self.state.commit(key, "main", [{"key": "header", "value": {"summary": "initial commit"}}, {"key": "file", "value": initial}])
        self._send_json({"url": f"{self.base_url}/{key}", "name": repo_id})

    def validate_yaml(self):
        # The Hub checks README metadata against its schema; the test hub only checks that a metadata block that
        # is opened is also closed (tests parse the metadata themselves).
        content = json.loads(self.body)["content"]
        if content.startswith("---") and "\n---" not in content[3:]:
            self._send_json({"errors": [{"message": "metadata block is not closed"}]}, 400)
            return
        self._send_json({"errors": [], "warnings": []})

    def preupload(self, repo, rev):
        repo_obj = self.state.repo(repo)
        existing = repo_obj.snapshot(unquote(rev))
        files = existing[1] if existing else {}
        answers = []
        for item in json.loads(self.body)["files"]:
            lfs = item["path"].endswith(DATASET_LFS_SUFFIXES if repo.startswith("datasets/") else LFS_SUFFIXES)
            blob = files.get(item["path"])
            oid = None if blob is None else (blob.sha256 if blob.lfs else _git_blob_sha1(blob.data))
            answers.append({"path": item["path"], "uploadMode": "lfs" if lfs else "regular", "shouldIgnore": False, "oid": oid})
        self._send_json({"files": answers})

    def lfs_batch(self, repo):
        self.state.repo(repo)
        objects = []
        for item in json.loads(self.body)["objects"]:
            entry = {"oid": item["oid"], "size": item["size"]}
            if item["oid"] not in self.state.lfs_objects:
                entry["actions"] = {"upload": {"href": f"{self.base_url}/lfs-objects/{item['oid']}", "header": {}}}
            objects.append(entry)
        self._send_json({"transfer": "basic", "objects": objects, "hash_algo": "sha256"})

    def lfs_upload(self, oid):
        if hashlib.sha256(self.body).hexdigest() != oid:
            raise HubError(400, None, f"uploaded content does not hash to {oid}")
        self.state.lfs_objects[oid] = self.body
        self._send(200, b"")

    def commit(self, repo, rev):
        lines = [json.loads(line) for line in self.body.decode().splitlines() if line.strip()]
        commit = self.state.commit(repo, rev, lines)
        self._send_json({"commitUrl": f"{self.base_url}/{repo}/commit/{commit}", "commitOid": commit, "pullRequestUrl": None})

    def repo_info(self, repo, rev="main"):
        commit, files = self.state.snapshot(repo, rev)
        siblings = [{"rfilename": path} for path in sorted(files)]
        repo_id = repo.removeprefix("datasets/")
        self._send_json({"id": repo_id, "modelId": repo_id, "sha": commit, "private": False, "siblings": siblings, "tags": []})

    def tree(self, repo, rev, path=""):
        _, files = self.state.snapshot(repo, rev)
        self._send_json(self._list(files, path.strip("/"), recursive=self.query.get("recursive") == ["true"]))

    def paths_info(self, repo, rev):
        _, files = self.state.snapshot(repo, rev)
        wanted = parse_qs(self.body.decode()).get("paths", [])
        entries = [files[p].tree_entry(p) for p in wanted if p in files]
        entries += [{"type": "directory", "oid": "0" * 40, "size": 0, "path": p} for p in wanted if self._is_dir(files, p)]
        self._send_json(entries)

    def resolve(self, repo, rev, path):
        commit, files = self.state.snapshot(repo, rev)
        path = unquote(path)
        if path not in files:
            raise HubError(404, "EntryNotFound", f"{path} not found in {repo}@{rev}")
        blob = files[path]
        headers = {"X-Repo-Commit": commit, "ETag": f'"{blob.git_oid}"', "Content-Type": "application/octet-stream"}
        if blob.lfs:
            headers.update({"X-Linked-Etag": f'"{blob.sha256}"', "X-Linked-Size": str(len(blob.data))})
        headers["Content-Length"] = str(len(blob.data))
        self._send(200, blob.data, headers)

    # ---- helpers ------------------------------------------------------------------------------------------------
    @staticmethod
    def _is_dir(files: dict[str, Blob], path: str) -> bool:
        return any(existing.startswith(path.rstrip("/") + "/") for existing in files)

    def _list(self, files: dict[str, Blob], path: str, recursive: bool) -> list[dict]:
        if path and path not in files and not self._is_dir(files, path):
            raise HubError(404, "EntryNotFound", f"{path} does not exist")
        prefix = f"{path}/" if path else ""
        entries, folders = [], set()
        for file_path in sorted(files):
            if not file_path.startswith(prefix):
                continue
            relative = PurePosixPath(file_path[len(prefix) :])
            if recursive or len(relative.parts) == 1:
                entries.append(files[file_path].tree_entry(file_path))
            for depth in range(1, len(relative.parts) if recursive else min(2, len(relative.parts))):
                folders.add(prefix + "/".join(relative.parts[:depth]))
        entries += [{"type": "directory", "oid": "0" * 40, "size": 0, "path": folder} for folder in sorted(folders)]
        return entries


class LocalHub:
    """The test hub on 127.0.0.1 (a free port), serving from a daemon thread until `stop()` or the `with` exits.

    `client_env(hf_home)` is the environment a client process needs: `HF_ENDPOINT` must be set before
    `huggingface_hub` is imported (it is read at import time), so client code runs in a subprocess.
    """

    def __init__(self):
        self.state = HubState()
        handler = type("BoundHubRequestHandler", (HubRequestHandler,), {"state": self.state})
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        handler.base_url = self.url
        self.thread = threading.Thread(target=self.server.serve_forever, name="local-hub", daemon=True)

    def start(self) -> LocalHub:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=10)

    def __enter__(self) -> LocalHub:
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()

    def client_env(self, hf_home: str, offline: bool = False) -> dict[str, str]:
        """Environment variables for a client process talking to this hub (or, `offline`, to no hub at all)."""
        return {
            "HF_ENDPOINT": self.url,
            "HF_TOKEN": "hf_local_test_hub_dummy",
            "HF_HOME": str(hf_home),
            "HF_HUB_DISABLE_XET": "1",
            "HF_HUB_DISABLE_TELEMETRY": "1",
            "HF_HUB_OFFLINE": "1" if offline else "0",
            "TOKENIZERS_PARALLELISM": "false",
        }

    def files(self, repo_id: str, revision: str = "main", repo_type: str = "model") -> dict[str, bytes]:
        """`{path: content}` of a repository at `revision`, read directly from the server's state."""
        with self.state.lock:
            _, files = self.state.snapshot(repo_id if repo_type == "model" else f"datasets/{repo_id}", revision)
            return {path: blob.data for path, blob in files.items()}

    def is_lfs(self, repo_id: str, path: str, revision: str = "main") -> bool:
        with self.state.lock:
            return self.state.snapshot(repo_id, revision)[1][path].lfs
