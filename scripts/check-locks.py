#!/usr/bin/env python3
"""Static check of the lock rule (Sources/Runtime/Concurrency/Locked.swift): decide
under the lock, act after it.

1. `Locked` is the only lock: no `Mutex` anywhere else in Sources/.
2. Inside a `withLock { ... }` body, nothing that can call back, block or take another
   lock: NIO futures and promises, connections and RPC sends, continuations and
   AsyncStreams, Task starts, the shells' action performers, blocking waits.

A line that must do one of these anyway says why with `// lock-ok: <reason>`.
The runtime check (SWIFTRAY_LOCK_CHECKS=1) catches what text cannot: calls that reach
such an operation through other functions.

Usage: scripts/check-locks.py [ROOT]   (exit 1 and one line per finding on a breach)
"""
import os
import re
import sys

FORBIDDEN = [
    (r"\w\.(resume)\(", "resumes a continuation"),
    (r"\w\.(yield)\(", "yields to an AsyncStream (wakes its consumer)"),
    (r"\w\.(finish)\(\)", "finishes an AsyncStream (runs its onTermination)"),
    (r"\b(whenComplete|whenSuccess|whenFailure|whenAllComplete|cascade)\b", "registers a NIO callback (may run inline)"),
    (r"\w\.(succeed|fail|completeWith)\(", "completes a promise or calls a waiter back"),
    (r"\bTask\s*(\{|\(|\.detached)", "starts a Task"),
    (r"(?:(?<=\w\.)|(?<![.\w]))(connect)\(", "opens a connection"),
    (r"\w\.(request|requestWithPayload|respond)\(", "sends on a connection"),
    (r"\w\.(write|writeAndFlush|flush)\(", "writes to a channel or stream"),
    (r"\w\.(close|closeAll|shutdown)\(", "closes a connection or service"),
    (r"\w\.(execute|scheduleTask|asyncAfter)\b", "schedules work that may run at once"),
    (r"\b(blockingAwait|usleep|sleep)\(", "blocks"),
    (r"\w\.(wait)\(", "blocks"),
    (r"\b(perform\w*|apply\w*Actions|objectsArrived)\(", "performs actions (takes locks, sends)"),
]
PATTERNS = [(re.compile(p), why) for p, why in FORBIDDEN]
WITH_LOCK = re.compile(r"\bwithLock\b")


def strip(text):
    """The text with comments and string literals blanked (same length, same lines), so
    braces and calls inside them are not seen."""
    out = list(text)
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if text.startswith("//", i):
            j = text.find("\n", i)
            j = n if j < 0 else j
            for k in range(i, j):
                out[k] = " "
            i = j
        elif text.startswith("/*", i):
            j = text.find("*/", i + 2)
            j = n if j < 0 else j + 2
            for k in range(i, j):
                if out[k] != "\n":
                    out[k] = " "
            i = j
        elif c == '"':
            multi = text.startswith('"""', i)
            end = '"""' if multi else '"'
            j = i + len(end)
            depth = 0
            while j < n:
                if text[j] == "\\" and j + 1 < n and text[j + 1] == "(":
                    depth += 1
                    j += 2
                    continue
                if depth and text[j] == ")":
                    depth -= 1
                elif depth and text[j] == "(":
                    depth += 1
                elif text[j] == "\\":
                    j += 2
                    continue
                elif not depth and text.startswith(end, j):
                    j += len(end)
                    break
                elif not multi and text[j] == "\n":
                    break
                j += 1
            for k in range(i, min(j, n)):
                if out[k] != "\n":
                    out[k] = " "
            i = j
        else:
            i += 1
    return "".join(out)


def lock_bodies(code):
    """(start, end) offsets of each `withLock` closure body."""
    for m in WITH_LOCK.finditer(code):
        i = m.end()
        # Skip `(file:..., line:...)` style arguments up to the closure's brace.
        depth = 0
        while i < len(code):
            ch = code[i]
            if ch == "{" and depth <= 1:
                break
            if ch == "(":
                depth += 1
            elif ch == ")":
                depth -= 1
                if depth < 0:
                    break
            elif ch == "\n" and depth == 0 and code[m.end():i].strip():
                break
            i += 1
        if i >= len(code) or code[i] != "{":
            continue
        start, depth = i, 0
        while i < len(code):
            if code[i] == "{":
                depth += 1
            elif code[i] == "}":
                depth -= 1
                if depth == 0:
                    yield start, i
                    break
            i += 1


def check_file(path, rel):
    text = open(path, encoding="utf-8").read()
    lines = text.split("\n")
    code = strip(text)
    findings = []
    if "Concurrency/Locked.swift" not in rel.replace(os.sep, "/"):
        for m in re.finditer(r"\bMutex\s*[<(]", code):
            line = code.count("\n", 0, m.start()) + 1
            findings.append(f"{rel}:{line}: uses Mutex: use Locked (Sources/Runtime/Concurrency/Locked.swift)")
    seen = set()
    for start, end in lock_bodies(code):
        body = code[start:end]
        for pattern, why in PATTERNS:
            for m in pattern.finditer(body):
                off = start + m.start()
                line = code.count("\n", 0, off) + 1
                if "lock-ok:" in lines[line - 1] or (line, why) in seen:
                    continue
                seen.add((line, why))
                findings.append(f"{rel}:{line}: under a lock, {why}: {lines[line - 1].strip()}")
    return findings


def main():
    root = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
    sources = os.path.join(root, "Sources")
    findings = []
    for d, _, files in os.walk(sources):
        if "RuntimeProto" in d:
            continue
        for f in sorted(files):
            if f.endswith(".swift"):
                p = os.path.join(d, f)
                findings += check_file(p, os.path.relpath(p, root))
    for f in findings:
        print(f)
    if findings:
        print(f"{len(findings)} breach(es) of the lock rule (see Sources/Runtime/Concurrency/Locked.swift)")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
