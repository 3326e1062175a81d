"""Ray Jobs for swiftray: submit an entrypoint to a cluster's head, which runs it as a
supervised driver there, with its runtime_env (a working_dir is zipped here and
uploaded once). Ray's names: `JobSubmissionClient`, `JobStatus`, `JobDetails`; the HTTP
routes are Ray's Jobs REST API on the dashboard's port, signed with the cluster token.

    client = JobSubmissionClient("http://127.0.0.1:8265")
    sid = client.submit_job(entrypoint="python script.py", runtime_env={"working_dir": "."})
    for lines in client.tail_job_logs(sid): print(lines, end="")   # (an async iterator)
"""
import asyncio
import enum
import json
import os
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from typing import Any, Dict, Optional

from swiftray import _runtime_env

__all__ = ["JobSubmissionClient", "JobStatus", "JobDetails", "JobInfo", "JobType"]


class JobStatus(str, enum.Enum):
    PENDING = "PENDING"
    RUNNING = "RUNNING"
    STOPPED = "STOPPED"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"

    def __str__(self):
        return self.value

    def is_terminal(self):
        return self in (JobStatus.STOPPED, JobStatus.SUCCEEDED, JobStatus.FAILED)


class JobType(str, enum.Enum):
    SUBMISSION = "SUBMISSION"
    DRIVER = "DRIVER"


@dataclass
class JobDetails:
    """A job as the head reports it (Ray's JobDetails fields)."""
    submission_id: Optional[str]
    entrypoint: str
    status: JobStatus
    type: JobType = JobType.SUBMISSION
    job_id: Optional[str] = None
    message: Optional[str] = None
    error_type: Optional[str] = None
    start_time: Optional[int] = None
    end_time: Optional[int] = None
    metadata: Dict[str, str] = field(default_factory=dict)
    runtime_env: Dict[str, Any] = field(default_factory=dict)
    driver_exit_code: Optional[int] = None
    driver_info: Optional[dict] = None
    entrypoint_num_cpus: Optional[float] = None
    entrypoint_num_gpus: Optional[float] = None
    entrypoint_memory: Optional[int] = None
    entrypoint_resources: Optional[Dict[str, float]] = None
    driver_agent_http_address: Optional[str] = None
    driver_node_id: Optional[str] = None

    @classmethod
    def _from_json(cls, d):
        known = {k: v for k, v in d.items() if k in cls.__dataclass_fields__}
        known["status"] = JobStatus(known["status"])
        known["type"] = JobType(known.get("type") or "SUBMISSION")
        return cls(**known)


JobInfo = JobDetails


def _token():
    """The cluster token, looked for as the core does: $SWIFTRAY_AUTH_TOKEN ($RAY_AUTH_TOKEN),
    the file $SWIFTRAY_AUTH_TOKEN_PATH ($RAY_AUTH_TOKEN_PATH) names, ~/.swiftray/auth_token.
    None when authentication is disabled or no token is found."""
    for key in ("SWIFTRAY_AUTH_MODE", "RAY_AUTH_MODE"):
        if os.environ.get(key):
            if os.environ[key].lower() == "disabled":
                return None
            break
    for key in ("SWIFTRAY_AUTH_TOKEN", "RAY_AUTH_TOKEN"):
        if os.environ.get(key):
            return os.environ[key].strip()
    for key in ("SWIFTRAY_AUTH_TOKEN_PATH", "RAY_AUTH_TOKEN_PATH"):
        if os.environ.get(key):
            with open(os.environ[key]) as f:
                return f.read().strip()
    path = os.path.join(os.path.expanduser("~"), ".swiftray", "auth_token")
    if os.path.exists(path):
        with open(path) as f:
            return f.read().strip()
    return None


class _HTTPPackages:
    """The head's package store as `_runtime_env.prepare` uses it, over the Jobs API."""

    def __init__(self, client):
        self._client = client

    @staticmethod
    def _path(uri):
        return "/api/packages/pkg/" + uri[len("pkg://"):]

    def exists(self, uri):
        status, _ = self._client._request("GET", self._path(uri), ok=(200, 404))
        return status == 200

    def upload(self, uri, data):
        self._client._request("PUT", self._path(uri), data=data, content_type="application/zip")


class JobSubmissionClient:
    """Talks to a cluster's head over its dashboard port (Ray's Jobs REST API).

    address: "http://HOST:PORT" of the dashboard (default: $SWIFTRAY_DASHBOARD_ADDRESS,
    $RAY_DASHBOARD_ADDRESS, $RAY_ADDRESS when it is an http URL, else
    http://127.0.0.1:8265). The cluster token is sent as `Authorization: Bearer`."""

    def __init__(self, address=None, create_cluster_if_needed=False, cookies=None, metadata=None, headers=None,
                 verify=True, timeout=60):
        address = address or os.environ.get("SWIFTRAY_DASHBOARD_ADDRESS") or os.environ.get("RAY_DASHBOARD_ADDRESS")
        if not address and os.environ.get("RAY_ADDRESS", "").startswith("http"):
            address = os.environ["RAY_ADDRESS"]
        address = address or "http://127.0.0.1:8265"
        if "://" not in address:
            address = "http://" + address
        parts = urllib.parse.urlsplit(address)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError(f"address must be the dashboard's http://HOST:PORT, got {address!r}")
        self._address = f"{parts.scheme}://{parts.netloc}"
        self._headers = dict(headers or {})
        self._default_metadata = dict(metadata or {})
        self._timeout = timeout
        token = _token()
        if token and not any(k.lower() == "authorization" for k in self._headers):
            self._headers["Authorization"] = f"Bearer {token}"
        self._request("GET", "/api/version")  # fails here, clearly, when nothing answers

    def _request(self, method, path, data=None, content_type="application/json", ok=(200,)):
        body = data if isinstance(data, (bytes, type(None))) else json.dumps(data).encode()
        req = urllib.request.Request(self._address + path, data=body, method=method, headers=dict(self._headers))
        if body is not None:
            req.add_header("Content-Type", content_type)
        try:
            with urllib.request.urlopen(req, timeout=self._timeout) as r:
                status, text = r.status, r.read()
        except urllib.error.HTTPError as e:
            status, text = e.code, e.read()
        except urllib.error.URLError as e:
            raise ConnectionError(f"Failed to connect to the cluster's dashboard at {self._address}: {e.reason}. "
                                  "Is the head running with its dashboard (swiftray start --head)?") from None
        if status not in ok:
            try:
                why = json.loads(text).get("msg") or text.decode()
            except (ValueError, AttributeError):
                why = text.decode(errors="replace")
            if status == 401:
                why += (" (the cluster token: set $SWIFTRAY_AUTH_TOKEN or copy the head's token to "
                        "~/.swiftray/auth_token; `swiftray get-auth-token` on the head prints it)")
            raise RuntimeError(f"Request failed with status code {status}: {why.strip()}")
        return status, (json.loads(text) if text else None)

    def submit_job(self, *, entrypoint, job_id=None, runtime_env=None, metadata=None, submission_id=None,
                   entrypoint_num_cpus=None, entrypoint_num_gpus=None, entrypoint_memory=None,
                   entrypoint_resources=None):
        """Submits `entrypoint` (a shell command run on the head); returns its submission id.
        A local working_dir or py_modules is zipped and uploaded first (once per content)."""
        if not isinstance(entrypoint, str) or not entrypoint.strip():
            raise ValueError("entrypoint must be a non-empty shell command, e.g. 'python script.py'")
        canonical = _runtime_env.prepare(_runtime_env.validate(runtime_env), _HTTPPackages(self)) if runtime_env else {}
        req = {"entrypoint": entrypoint, "runtime_env": canonical,
               "metadata": dict(self._default_metadata, **(metadata or {}))}
        if submission_id or job_id:
            req["submission_id"] = submission_id or job_id
        for k, v in (("entrypoint_num_cpus", entrypoint_num_cpus), ("entrypoint_num_gpus", entrypoint_num_gpus),
                     ("entrypoint_memory", entrypoint_memory), ("entrypoint_resources", entrypoint_resources)):
            if v is not None:
                req[k] = v
        return self._request("POST", "/api/jobs/", data=req)[1]["submission_id"]

    def get_job_info(self, job_id):
        return JobDetails._from_json(self._request("GET", f"/api/jobs/{_quote(job_id)}")[1])

    def list_jobs(self):
        return [JobDetails._from_json(d) for d in self._request("GET", "/api/jobs/")[1]]

    def get_job_status(self, job_id):
        return self.get_job_info(job_id).status

    def stop_job(self, job_id):
        """Asks the head to stop the job's driver (SIGTERM, then SIGKILL after 3 s);
        False when it had already ended."""
        return bool(self._request("POST", f"/api/jobs/{_quote(job_id)}/stop")[1]["stopped"])

    def delete_job(self, job_id):
        """Forgets a job that ended, and its logs."""
        return bool(self._request("DELETE", f"/api/jobs/{_quote(job_id)}")[1]["deleted"])

    def get_job_logs(self, job_id):
        return self._request("GET", f"/api/jobs/{_quote(job_id)}/logs")[1]["logs"]

    def _logs_from(self, job_id, offset):
        answer = self._request("GET", f"/api/jobs/{_quote(job_id)}/logs?offset={offset}")[1]
        return answer["logs"], answer["offset"]

    async def tail_job_logs(self, job_id, poll_interval=0.25):
        """What the job prints, as it prints it, until it ends (an async iterator of str)."""
        offset = 0
        while True:
            status = await asyncio.to_thread(self.get_job_status, job_id)
            text, offset = await asyncio.to_thread(self._logs_from, job_id, offset)
            if text:
                yield text
            if status.is_terminal():
                text, offset = await asyncio.to_thread(self._logs_from, job_id, offset)
                if text:
                    yield text
                return
            await asyncio.sleep(poll_interval)

    def follow_job_logs(self, job_id, poll_interval=0.25):
        """`tail_job_logs` for synchronous code (a plain iterator)."""
        offset = 0
        while True:
            done = self.get_job_status(job_id).is_terminal()
            text, offset = self._logs_from(job_id, offset)
            if text:
                yield text
            if done:
                return
            time.sleep(poll_interval)


def _quote(job_id):
    if not isinstance(job_id, str) or not job_id:
        raise TypeError(f"a job's submission id is a non-empty str, got {job_id!r}")
    return urllib.parse.quote(job_id, safe="")
