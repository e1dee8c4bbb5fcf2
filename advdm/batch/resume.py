"""What a protect run has left to do, and the hashes that decide it.

An input is done when the merged manifest's latest record for it says done, for the same input
bytes (SHA-256), the same configuration hash and the same output, and that output exists. An
output saved by a run killed before it could record it carries both hashes in its PNG metadata
and is recorded, not redone. Everything else is to do, including earlier failures.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from . import manifest
from ..images import read_png_metadata
from .worklist import WorkItem

FINGERPRINT_BYTES = 1 << 20


@dataclass(frozen=True)
class Task:
    item: WorkItem
    record: dict  # what its manifest record says whatever happens: input, output, both hashes
    error: Optional[str] = None  # known before any work is done: unreadable input, output clash


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(FINGERPRINT_BYTES), b""):
            digest.update(block)
    return digest.hexdigest()


def input_hash(item: WorkItem) -> tuple[Optional[str], Optional[str]]:
    """(SHA-256 of the input file, None), or (None, why it cannot be read)."""
    try:
        return file_sha256(item.source), None
    except OSError as e:
        return None, f"{item.source}: cannot read ({e.strerror or e})"


def image_seed(seed: int, input_sha256: str) -> int:
    """The attack's seed for one image, from --seed and the image's bytes alone: its pixels do not
    depend on the rank, the order or the rest of the batch, and no two images of a portfolio share
    one random start that averaging them could reveal. 63 bits, which torch.Generator takes."""
    digest = hashlib.sha256(f"{seed}:{input_sha256}".encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1


def checkpoint_fingerprint(spec: str) -> str:
    """The same for every copy of a checkpoint, wherever it is: each weight file's path inside the
    folder, size and first and last MiB. Not a full hash: reading a 7 GB file would add a minute to
    every run, and a different checkpoint of the same size and ends is not a realistic accident."""
    path = Path(spec).expanduser()
    if spec.startswith("builtin:") or not path.exists():
        return spec
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    digest = hashlib.sha256()
    for file in files:
        size = file.stat().st_size
        with open(file, "rb") as f:
            head = f.read(FINGERPRINT_BYTES)
            f.seek(max(size - FINGERPRINT_BYTES, 0))
            tail = f.read()
        name = file.relative_to(path).as_posix() if path.is_dir() else ""
        digest.update(json.dumps([name, size]).encode() + head + tail)
    return digest.hexdigest()


def config_sha256(settings: dict) -> str:
    """SHA-256 of everything that changes the pixels (canonical JSON: the same in every process,
    unlike Python's hash())."""
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()


def plan(items: list[WorkItem], hashes: list, config_hash: str, output_dir: Path) -> tuple[list[Task], int, list[dict]]:
    """(tasks to do, in the work list's order; how many are done already; records to add for
    outputs saved but not recorded)."""
    latest = manifest.latest(output_dir)
    todo, done, recovered = [], 0, []
    for item, (sha, error) in zip(items, hashes):
        record = {"input": item.key, "output": item.output.relative_to(output_dir).as_posix(),
                  "input_sha256": sha, "config_sha256": config_hash}
        if item.clash or error:
            todo.append(Task(item, record, item.clash or error))
        elif _recorded_done(latest.get(item.key), record) and item.output.exists():
            done += 1
        elif _saved_hashes(item.output) == (sha, config_hash):
            done += 1
            recovered.append({**record, "status": "done", "error": None, "note": "saved by a run killed before "
                              "it recorded it"})
        else:
            todo.append(Task(item, record))
    return todo, done, recovered


def _recorded_done(record: Optional[dict], wanted: dict) -> bool:
    return record is not None and record.get("status") == "done" and all(record.get(k) == v for k, v in wanted.items())


def _saved_hashes(path: Path) -> Optional[tuple]:
    if not path.is_file():
        return None
    try:
        saved = json.loads(read_png_metadata(path).get("advdm", "{}"))
    except ValueError:  # not ours, not a PNG, unreadable: not done
        return None
    return (saved.get("input_sha256"), saved.get("config_sha256")) if isinstance(saved, dict) else None
