"""What a protect run did, per input: JSON lines in the output folder, one file per rank.

One file per rank rather than one shared file: ranks on several machines meet in a shared
output folder, and appends to one file from several machines over NFS can interleave or be
lost (O_APPEND is not atomic there). Each rank is the only writer of its own file; readers
merge them all, the latest record of an input winning. A record is one write() of one line,
synced, so a kill leaves at most a torn last line, which readers skip.
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

PATTERN = "advdm-manifest.rank-*.jsonl"


def manifest_path(output_dir: Path, rank: int) -> Path:
    return Path(output_dir) / PATTERN.replace("*", str(rank))


def append(path: Path, record: dict) -> None:
    """Add one record (stamped with the time) as one line."""
    line = json.dumps({**record, "time": time.time()}, sort_keys=True) + "\n"
    fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o666)
    try:
        size = os.fstat(fd).st_size
        if size and os.pread(fd, 1, size - 1) != b"\n":  # a torn line from a kill: start a fresh one
            line = "\n" + line
        os.write(fd, line.encode("utf-8"))
        os.fsync(fd)
    finally:
        os.close(fd)


def records(output_dir: Path) -> list[dict]:
    """Every readable record of every rank's file, oldest first (by time, then file order)."""
    found = []
    for path in sorted(Path(output_dir).glob(PATTERN)):
        for number, line in enumerate(path.read_text("utf-8", errors="replace").splitlines()):
            try:
                record = json.loads(line)
            except ValueError:
                continue  # torn by a kill
            if isinstance(record, dict) and "input" in record:
                found.append((record.get("time", 0), path.name, number, record))
    return [record for *_, record in sorted(found, key=lambda r: r[:3])]


def latest(output_dir: Path) -> dict[str, dict]:
    """The merged manifest: each input once, with its latest record."""
    return {record["input"]: record for record in records(output_dir)}
