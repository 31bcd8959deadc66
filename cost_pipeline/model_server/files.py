"""The Files API as google-genai calls it, in memory, for the local Gemini-compatible server.

A batch job too large to inline uploads its requests as a JSON Lines file and gets its
answers back as a result file; this is the part of the Files API that needs:
resumable upload (`POST /upload/{version}/files` with `X-Goog-Upload-Command: start`, then
`upload[, finalize]` chunks to the returned `x-goog-upload-url`), `GET files/{id}`,
`GET files/{id}:download?alt=media` (result files only, as at Google) and
`DELETE files/{id}`. Files live as long as the server.
"""

import json
import re
import time
import urllib.parse
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone

FILE_PATH = re.compile(r"^/(?P<version>v1[a-z0-9]*)/files/(?P<id>[^:/]+)(?::(?P<method>[A-Za-z]+))?$")
UPLOAD_PATH = re.compile(r"^/upload/(?P<version>v1[a-z0-9]*)/files$")

Reply = tuple[int, dict | bytes, dict[str, str]]


@dataclass
class StoredFile:
    name: str
    display_name: str
    mime_type: str
    content: bytearray = field(default_factory=bytearray)
    created: float = field(default_factory=time.time)
    generated: bool = False
    """A file the server wrote (a batch's results): only these can be downloaded, as at Google."""

    def resource(self) -> dict:
        stamp = datetime.fromtimestamp(self.created, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        resource = {
            "name": self.name,
            "displayName": self.display_name,
            "mimeType": self.mime_type,
            "sizeBytes": str(len(self.content)),
            "createTime": stamp,
            "updateTime": stamp,
            "state": "ACTIVE",
            "source": "GENERATED" if self.generated else "UPLOADED",
        }
        if self.generated:
            resource["downloadUri"] = f"{self.name}:download?alt=media"
        return resource


class LocalFiles:
    def __init__(self):
        self.files: dict[str, StoredFile] = {}
        self.uploads: dict[str, StoredFile] = {}

    def clear(self) -> None:
        self.files.clear()
        self.uploads.clear()

    def add(self, content: bytes, display_name: str, mime_type: str = "application/jsonl") -> str:
        """A file the server generated (a batch's results); returns its name."""
        stored = StoredFile(
            f"files/{uuid.uuid4().hex[:16]}", display_name, mime_type, bytearray(content), generated=True
        )
        self.files[stored.name] = stored
        return stored.name

    def content(self, name: str) -> bytes | None:
        stored = self.files.get(name if name.startswith("files/") else f"files/{name}")
        return bytes(stored.content) if stored else None

    def route(self, method: str, path: str, query: bytes, headers: dict[str, str], body: bytes) -> Reply | None:
        """The reply to a Files API request, or None when the path is not one."""
        if UPLOAD_PATH.match(path) and method == "POST":
            return self._upload(query, headers, body)
        found = FILE_PATH.match(path)
        if not found:
            return None
        stored = self.files.get(f"files/{found['id']}")
        if stored is None:
            return 404, error_body(404, f"file files/{found['id']} not found", "NOT_FOUND"), {}
        if method == "GET" and found["method"] is None:
            return 200, stored.resource(), {}
        if method == "GET" and found["method"] == "download":
            if not stored.generated:
                return 400, error_body(400, "only generated files can be downloaded", "INVALID_ARGUMENT"), {}
            return 200, bytes(stored.content), {"content-type": stored.mime_type}
        if method == "DELETE" and found["method"] is None:
            del self.files[stored.name]
            return 200, {}, {}
        return 400, error_body(400, f"{method} {path} is not supported here", "INVALID_ARGUMENT"), {}

    def _upload(self, query: bytes, headers: dict[str, str], body: bytes) -> Reply:
        command = headers.get("x-goog-upload-command", "")
        upload_id = urllib.parse.parse_qs(query.decode()).get("upload_id", [None])[0]
        if command == "start":
            meta = json.loads(body or b"{}").get("file") or {}
            name = meta.get("name") or f"files/{uuid.uuid4().hex[:16]}"
            upload_id = uuid.uuid4().hex
            self.uploads[upload_id] = StoredFile(
                name,
                meta.get("displayName", ""),
                headers.get("x-goog-upload-header-content-type", "application/octet-stream"),
            )
            host = headers.get("host", "localhost")
            return (
                200,
                {},
                {
                    "x-goog-upload-url": f"http://{host}/upload/v1beta/files?upload_id={upload_id}",
                    "x-goog-upload-status": "active",
                },
            )
        stored = self.uploads.get(upload_id or "")
        if stored is None:
            return 404, error_body(404, "no such upload", "NOT_FOUND"), {"x-goog-upload-status": "final"}
        if int(headers.get("x-goog-upload-offset", "0")) != len(stored.content):
            return (
                400,
                error_body(400, "upload offset does not match", "INVALID_ARGUMENT"),
                {"x-goog-upload-status": "final"},
            )
        stored.content += body
        if "finalize" not in command:
            return 200, {}, {"x-goog-upload-status": "active"}
        del self.uploads[upload_id or ""]
        self.files[stored.name] = stored
        return 200, {"file": stored.resource()}, {"x-goog-upload-status": "final"}


def error_body(code: int, message: str, status: str) -> dict:
    return {"error": {"code": code, "message": message, "status": status}}
