"""`swiftray job …`: Ray's `ray job` commands against a cluster's Jobs API.

    swiftray job submit [--address URL] [--submission-id ID] [--runtime-env-json JSON | --runtime-env FILE]
                        [--working-dir DIR] [--entrypoint-num-cpus N] [--entrypoint-num-gpus N]
                        [--entrypoint-resources JSON] [--metadata-json JSON] [--no-wait] -- ENTRYPOINT...
    swiftray job status|stop|delete ID     swiftray job logs ID [--follow]     swiftray job list
"""
import argparse
import json
import shlex
import sys

from swiftray.job_submission import JobStatus, JobSubmissionClient


def _parser():
    p = argparse.ArgumentParser(prog="swiftray job", description="Submit and manage jobs on a swiftray cluster.")
    sub = p.add_subparsers(dest="command", required=True)

    def command(name, help):
        c = sub.add_parser(name, help=help)
        c.add_argument("--address", help="the dashboard's http://HOST:PORT (default: $RAY_ADDRESS if http, "
                                         "else http://127.0.0.1:8265)")
        return c

    s = command("submit", "Submit a job; without --no-wait, follow its logs until it ends.")
    s.add_argument("--submission-id", "--job-id", dest="submission_id")
    s.add_argument("--runtime-env-json", help="the runtime_env as JSON")
    s.add_argument("--runtime-env", help="a file holding the runtime_env (JSON, or YAML if PyYAML is installed)")
    s.add_argument("--working-dir", help="a local folder shipped as the job's working_dir")
    s.add_argument("--metadata-json", help="metadata as a JSON object of strings")
    s.add_argument("--entrypoint-num-cpus", type=float)
    s.add_argument("--entrypoint-num-gpus", type=float)
    s.add_argument("--entrypoint-memory", type=int)
    s.add_argument("--entrypoint-resources", help="a JSON object of resource quantities")
    s.add_argument("--no-wait", action="store_true", help="return once submitted")
    s.add_argument("entrypoint", nargs=argparse.REMAINDER, help="-- then the command to run")
    for name, help in (("status", "Print a job's status."), ("stop", "Stop a job."), ("delete", "Forget a job that ended.")):
        command(name, help).add_argument("job_id")
    lg = command("logs", "Print a job's logs.")
    lg.add_argument("job_id")
    lg.add_argument("-f", "--follow", action="store_true", help="keep printing until the job ends")
    command("list", "List the cluster's jobs.")
    return p


def _runtime_env(a):
    env = {}
    if a.runtime_env:
        with open(a.runtime_env) as f:
            text = f.read()
        try:
            env = json.loads(text)
        except ValueError:
            try:
                import yaml
            except ImportError:
                raise SystemExit(f"{a.runtime_env} is not JSON (install PyYAML to read YAML)") from None
            env = yaml.safe_load(text) or {}
    if a.runtime_env_json:
        env = json.loads(a.runtime_env_json)
    if a.working_dir:
        env["working_dir"] = a.working_dir
    return env or None


def _follow(client, job_id):
    for text in client.follow_job_logs(job_id):
        sys.stdout.write(text)
        sys.stdout.flush()
    status = client.get_job_status(job_id)
    info = client.get_job_info(job_id)
    print(f"\n------------------------------------------\nJob '{job_id}' {status.value.lower()}\n"
          f"------------------------------------------\n{info.message or ''}", flush=True)
    return 0 if status == JobStatus.SUCCEEDED else 1


def main(argv):
    a = _parser().parse_args(argv)
    try:
        client = JobSubmissionClient(a.address)
        if a.command == "submit":
            entry = a.entrypoint[1:] if a.entrypoint[:1] == ["--"] else a.entrypoint
            if not entry:
                raise SystemExit("give the entrypoint after --, e.g. swiftray job submit -- python script.py")
            job_id = client.submit_job(
                entrypoint=" ".join(shlex.quote(x) for x in entry) if len(entry) > 1 else entry[0],
                submission_id=a.submission_id, runtime_env=_runtime_env(a),
                metadata=json.loads(a.metadata_json) if a.metadata_json else None,
                entrypoint_num_cpus=a.entrypoint_num_cpus, entrypoint_num_gpus=a.entrypoint_num_gpus,
                entrypoint_memory=a.entrypoint_memory,
                entrypoint_resources=json.loads(a.entrypoint_resources) if a.entrypoint_resources else None)
            print(f"Job '{job_id}' submitted successfully", flush=True)
            if a.no_wait:
                print(f"Query the logs of the job:\n  swiftray job logs {job_id}\n"
                      f"Query the status of the job:\n  swiftray job status {job_id}\n"
                      f"Request the job to be stopped:\n  swiftray job stop {job_id}")
                return 0
            return _follow(client, job_id)
        if a.command == "status":
            info = client.get_job_info(a.job_id)
            print(f"Status for job '{a.job_id}': {info.status.value}\nStatus message: {info.message}")
            return 0
        if a.command == "stop":
            stopped = client.stop_job(a.job_id)
            print(f"Job '{a.job_id}' " + ("stop requested" if stopped else "had already ended"))
            return 0
        if a.command == "delete":
            client.delete_job(a.job_id)
            print(f"Job '{a.job_id}' deleted successfully")
            return 0
        if a.command == "logs":
            if a.follow:
                return _follow(client, a.job_id)
            sys.stdout.write(client.get_job_logs(a.job_id))
            return 0
        if a.command == "list":
            for j in client.list_jobs():
                print(f"{j.submission_id}\t{j.status.value}\t{j.entrypoint}\t{j.message or ''}")
            return 0
    except (ConnectionError, RuntimeError, ValueError, TypeError, OSError) as e:
        print(f"swiftray job {a.command}: {e}", file=sys.stderr)
        return 1
    return 2
