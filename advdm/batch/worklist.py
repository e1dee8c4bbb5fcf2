"""The work list of a protect run: every input image once, in a stable order, and its output.

Folders are walked recursively and their tree is mirrored under the output folder. The list is
sorted by the input's path, so every process of a sharded run (and every re-run) sees the same
list whatever order the file system lists files in.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from ..images import output_path

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff", ".gif"}


@dataclass(frozen=True)
class WorkItem:
    source: Path  # as given, or the folder given joined with the path below it
    output: Path  # under the output folder
    clash: Optional[str] = None  # why it cannot be done: another input writes the same output

    @property
    def key(self) -> str:
        """The input's name in the manifest: the same on every rank and every re-run of the command."""
        return self.source.as_posix()


def find_work(paths: list, output_dir: Path, suffix: str = "_protected") -> list[WorkItem]:
    """Image files and the images in folders (recursively), sorted, each with its output path."""
    found = {}
    for path in map(Path, paths):
        if path.is_dir():
            for source in _images_below(path, output_dir):
                relative = source.relative_to(path)
                found.setdefault(source.as_posix(), (source, output_path(relative, output_dir / relative.parent, suffix)))
        else:
            found.setdefault(path.as_posix(), (path, output_path(path, output_dir, suffix)))
    items, claimed = [], {}
    for key in sorted(found):
        source, out = found[key]
        first = claimed.setdefault(out, source)
        clash = None if first == source else f"{source}: writes the same output {out} as {first}; rename one of them"
        items.append(WorkItem(source, out, clash))
    return items


def _images_below(folder: Path, output_dir: Path):
    # Hidden files and folders are not artwork: macOS's "._name.png" resource forks on shared
    # drives, .thumbnails, .Trash. An output folder inside the input folder holds outputs.
    skip = output_dir.resolve()
    for root, dirs, files in os.walk(folder):
        dirs[:] = [d for d in dirs if not d.startswith(".") and (Path(root) / d).resolve() != skip]
        for name in files:
            if Path(name).suffix.lower() in IMAGE_SUFFIXES and not name.startswith("."):
                yield Path(root) / name
