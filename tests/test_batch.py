"""Batches: the work list, the manifest, re-runs, and two torchrun ranks on CPU with gloo."""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from advdm.batch import manifest
from advdm.batch.resume import config_sha256, image_seed
from advdm.cli import main
from advdm.batch.ranks import Ranks
from advdm.batch.worklist import find_work

ROOT = Path(__file__).resolve().parents[1]
FAST = ["--checkpoint", "builtin:tiny", "--steps", "4"]


def write_images(folder, names, size=32):
    rng = np.random.default_rng(len(names))
    for name in names:
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(folder / name)


def pngs(folder):
    return {p.relative_to(folder).as_posix(): np.asarray(Image.open(p)) for p in sorted(folder.rglob("*.png"))}


def test_the_work_list_is_sorted_recursive_mirrored_and_skips_its_own_output(tmp_path):
    write_images(tmp_path / "art", ["b.png", "sub/deeper/c.jpg", "a.png", "sub/a.png", "._a.png", ".thumbnails/a.png"])
    (tmp_path / "art" / "notes.txt").write_text("not an image")
    out = tmp_path / "art" / "protected"  # inside the input folder, with an earlier output in it
    write_images(out, ["a_protected.png"])
    items = find_work([tmp_path / "art"], out)
    assert [i.source.relative_to(tmp_path / "art").as_posix() for i in items] == [
        "a.png", "b.png", "sub/a.png", "sub/deeper/c.jpg"]
    assert [i.output.relative_to(out).as_posix() for i in items] == [
        "a_protected.png", "b_protected.png", "sub/a_protected.png", "sub/deeper/c_protected.png"]
    assert not any(i.clash for i in items)


def test_two_inputs_for_one_output_are_refused_by_name(tmp_path):
    write_images(tmp_path, ["x/art.png", "x/art.jpg"])
    first, second = find_work([tmp_path / "x"], tmp_path / "out")
    assert first.clash is None and "art.png" in second.clash and "art.jpg" in second.clash


def test_shares_cover_the_list_once_in_any_world_size():
    items = list(range(11))
    for world in (1, 2, 3, 4):
        shares = [Ranks(rank, world).share(items) for rank in range(world)]
        assert sorted(sum(shares, [])) == items
    assert Ranks().map_shared(lambda x: x * x, items) == [x * x for x in items]  # alone: all of it


def test_the_merged_manifest_takes_each_inputs_latest_record_and_skips_torn_lines(tmp_path):
    manifest.append(manifest.manifest_path(tmp_path, 0), {"input": "a", "status": "failed"})
    manifest.append(manifest.manifest_path(tmp_path, 1), {"input": "b", "status": "done"})
    with open(manifest.manifest_path(tmp_path, 0), "a") as f:
        f.write('{"input": "a", "sta')  # a kill in the middle of a line
    manifest.append(manifest.manifest_path(tmp_path, 0), {"input": "a", "status": "done"})
    assert {k: r["status"] for k, r in manifest.latest(tmp_path).items()} == {"a": "done", "b": "done"}
    assert len(manifest.records(tmp_path)) == 3


def test_seeds_and_config_hashes_are_the_same_in_every_process():
    # fixed values: neither may come from Python's per-process hash()
    assert image_seed(0, "ab" * 32) == image_seed(0, "ab" * 32) != image_seed(1, "ab" * 32)
    assert 0 <= image_seed(0, "ab" * 32) < 2**63
    assert config_sha256({"b": 1, "a": [2]}) == config_sha256({"a": [2], "b": 1})
    code = "from advdm.batch.resume import image_seed; print(image_seed(7, 'cd' * 32))"
    other = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert int(other.stdout) == image_seed(7, "cd" * 32)


def test_a_rerun_skips_done_work_retries_failures_and_a_new_config_needs_overwrite(tmp_path, capsys):
    write_images(tmp_path / "in", ["a.png", "b.png"])
    (tmp_path / "in" / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    out = tmp_path / "out"
    assert main(["protect", str(tmp_path / "in"), "-o", str(out), *FAST]) == 1
    latest = manifest.latest(out)
    assert latest[f"{tmp_path}/in/bad.png"]["status"] == "failed" and "bad.png" in latest[f"{tmp_path}/in/bad.png"]["error"]
    stamps = {p.name: p.stat().st_mtime_ns for p in out.glob("*.png")}
    assert sorted(stamps) == ["a_protected.png", "b_protected.png"]

    (tmp_path / "in" / "bad.png").unlink()
    write_images(tmp_path / "in", ["bad.png"])  # fixed by the artist: done on the re-run, the rest skipped
    capsys.readouterr()
    assert main(["protect", str(tmp_path / "in"), "-o", str(out), *FAST]) == 0
    assert "1 protected now, 2 already done, 0 failed" in capsys.readouterr().out
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("*.png") if p.name in stamps} == stamps
    assert {r["status"] for r in manifest.latest(out).values()} == {"done"}
    assert len(manifest.records(out)) == 4  # known from the manifest: nothing added for a or b

    assert main(["protect", str(tmp_path / "in"), "-o", str(out), *FAST, "--epsilon", "4"]) == 1
    assert "already exists" in capsys.readouterr().err
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("*.png") if p.name in stamps} == stamps
    assert main(["protect", str(tmp_path / "in"), "-o", str(out), *FAST, "--epsilon", "4", "--overwrite"]) == 0
    assert "3 protected now" in capsys.readouterr().out


def test_an_output_saved_but_not_recorded_before_a_kill_is_recorded_not_redone(tmp_path, capsys):
    write_images(tmp_path / "in", ["a.png"])
    out = tmp_path / "out"
    assert main(["protect", str(tmp_path / "in"), "-o", str(out), *FAST]) == 0
    manifest.manifest_path(out, 0).unlink()  # as if killed between the save and the record
    stamp = (out / "a_protected.png").stat().st_mtime_ns
    capsys.readouterr()
    assert main(["protect", str(tmp_path / "in"), "-o", str(out), *FAST]) == 0
    assert "0 protected now, 1 already done" in capsys.readouterr().out
    assert (out / "a_protected.png").stat().st_mtime_ns == stamp
    assert [r["status"] for r in manifest.records(out)] == ["done"]


def _torchrun(inputs, out, *options):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--standalone",
               "-m", "advdm", "protect", str(inputs), "-o", str(out), *options]
    return subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)


def _alive_with(marker: str) -> list:
    """Processes whose command line names `marker` (our output folder): orphaned ranks."""
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if marker in cmdline.read_bytes().decode(errors="replace"):
                found.append(cmdline.parent.name)
        except OSError:
            pass
    return found


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="kills a process group, reads /proc")
def test_two_gloo_ranks_do_each_image_once_survive_a_kill_and_match_one_process(tmp_path):
    names = [f"{folder}img{i}.png" for folder in ("", "sub/") for i in range(4)]
    write_images(tmp_path / "in", names)
    options = ["--checkpoint", "builtin:tiny", "--steps", "12", "--seed", "5"]
    out = tmp_path / "out"

    run = _torchrun(tmp_path / "in", out, *options)  # preempted once a few images are written
    deadline = time.time() + 120
    while len(list(out.rglob("*.png"))) < 2 and run.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    os.killpg(run.pid, signal.SIGTERM)
    try:
        run.communicate(timeout=90)
    except subprocess.TimeoutExpired:
        os.killpg(run.pid, signal.SIGKILL)
        run.communicate()
    assert not _alive_with(str(out)), "a rank outlived its torchrun"
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*.png")}
    assert 2 <= len(before) < len(names), "the kill came too late to leave work for the re-run"
    assert not list(out.rglob("*.tmp")) and not list(out.rglob(".*.tmp")), "a half-written file was left behind"

    rerun = _torchrun(tmp_path / "in", out, *options)
    stdout, stderr = rerun.communicate(timeout=240)
    assert rerun.returncode == 0, stderr[-3000:]
    assert f"{len(names) - len(before)} protected now, {len(before)} already done, 0 failed" in stdout, stdout
    assert {p: p.stat().st_mtime_ns for p in before} == before  # done work was not redone
    records = manifest.records(out)
    assert sorted(r["input"] for r in records) == sorted(f"{tmp_path}/in/{n}" for n in names)  # each image once
    assert {r["status"] for r in records} == {"done"}
    assert {r["rank"] for r in records} == {0, 1}

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as each rank ran
    try:
        assert main(["protect", str(tmp_path / "in"), "-o", str(tmp_path / "alone"), *options]) == 0
    finally:
        torch.set_num_threads(threads)
    sharded, alone = pngs(out), pngs(tmp_path / "alone")
    assert sorted(sharded) == sorted(alone) == sorted(n.replace(".png", "_protected.png") for n in names)
    assert all((sharded[name] == alone[name]).all() for name in alone)
