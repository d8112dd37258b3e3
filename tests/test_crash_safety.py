"""Crashes and concurrency with real processes and kill -9: decode workers die with their
parent, readers never break a commit, one writer at a time, no stale checkpoints, and
small runs checkpoint too."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import radsearch
from radsearch.cli import main
from radsearch.index import Index
from radsearch.io.items import ItemRef

# Child processes import the same radsearch as this one.
ENV = {**os.environ, "PYTHONPATH": str(Path(radsearch.__file__).resolve().parents[1])}


def script(tmp_path: Path, body: str, *args) -> subprocess.Popen:
    path = tmp_path / f"script-{time.monotonic_ns()}.py"
    path.write_text(textwrap.dedent(body))
    return subprocess.Popen(
        [sys.executable, str(path), *map(str, args)],
        env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


def wait_for(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state not in ("Z", "X")


def pngs(folder: Path, n: int) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(3)
    for i in range(n):
        arr = rng.integers(0, 255, (24, 24, 3), dtype=np.uint8)
        Image.fromarray(arr).save(folder / f"{i:03d}.png")
    return folder


SLOW_DECODE = """
import os, sys, time
from pathlib import Path
import radsearch.decode as decode
import radsearch.embed as embed
marker, delay = Path(sys.argv[2]), float(sys.argv[4])
embed.CHECKPOINT_SECONDS = 0.5
real = decode.load_pixels
def slow(ref):
    with open(marker, "a") as fh:
        fh.write(f"{os.getpid()} {ref.id}\\n")
    time.sleep(delay)
    return real(ref)
decode.load_pixels = slow
from radsearch.encoders import create_encoder
from radsearch.io.sources import iter_source
refs = list(iter_source(sys.argv[1]))
embed.embed_refs(refs, create_encoder("efficientnet-lite0"), sys.argv[3],
                 workers=int(sys.argv[5]), batch_size=int(sys.argv[6]), progress=False)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_decode_workers_exit_when_the_parent_is_killed(tmp_path):
    """Case 11: a worker stuck in a long decode exits after a kill -9 of its parent."""
    src, marker = pngs(tmp_path / "src", 4), tmp_path / "decoding"
    parent = script(tmp_path, SLOW_DECODE, src, marker, tmp_path / "work", 120, 1, 4)
    line = wait_for(lambda: marker.exists() and marker.read_text().strip(), 120, "a decode")
    worker = int(line.split()[0])
    assert worker != parent.pid and alive(worker)
    os.kill(parent.pid, signal.SIGKILL)
    parent.wait(30)
    try:
        wait_for(lambda: not alive(worker), 10, f"worker {worker} to exit")
    finally:
        if alive(worker):
            os.kill(worker, signal.SIGKILL)


def test_small_runs_checkpoint_and_resume_after_kill(tmp_path):
    """Case 13: a run of far fewer items than a shard leaves checkpoints when killed."""
    from radsearch.embed import _load_done, embed_refs
    from radsearch.encoders import create_encoder
    from radsearch.io.sources import iter_source

    src, marker, work = pngs(tmp_path / "src", 20), tmp_path / "decoded", tmp_path / "work"
    proc = script(tmp_path, SLOW_DECODE, src, marker, work, 0.3, 0, 2)
    wait_for(lambda: marker.exists() and len(marker.read_text().split("\n")) > 8, 120, "decodes")
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(30)
    done, _ = _load_done(work)
    assert 2 <= len(done) < 20
    refs = list(iter_source(src))
    result = embed_refs(refs, create_encoder("efficientnet-lite0"), work, workers=0,
                        progress=False)  # fmt: skip
    assert [r.id for r in result.refs] == [r.id for r in refs]
    np.testing.assert_allclose(result.vectors[: len(done)], np.stack(list(done.values())))


def small_index(path: Path, n: int = 5) -> Path:
    rng = np.random.default_rng(0)
    index = Index.create(path, "efficientnet-lite0")
    vecs = rng.standard_normal((n, index.dim)).astype(np.float32)
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    index.add([ItemRef(f"i{i}.png", f"/d/i{i}.png") for i in range(n)], vecs)
    index.save()
    return path


WRITER = """
import sys
import numpy as np
from radsearch.index import Index
from radsearch.io.items import ItemRef
index = Index.open(sys.argv[1])
rng = np.random.default_rng(1)
for i in range(int(sys.argv[2])):
    v = rng.standard_normal((1, index.dim)).astype(np.float32)
    index.add([ItemRef(f"w{i}.png", f"/w/{i}.png")], v / np.linalg.norm(v))
    index.save()
print("wrote", index.count)
"""


def test_readers_opening_during_commits_never_break_them(tmp_path):
    """Case 12: a reader opening the index in a loop while another process commits."""
    path = small_index(tmp_path / "idx")
    writer = script(tmp_path, WRITER, path, 40)
    opened, counts = 0, []
    while writer.poll() is None:
        index = Index.open(path)  # raises on any inconsistency
        assert index.items.num_rows == index.count == len(index.embeddings)
        counts.append(index.count)
        opened += 1
    out, err = writer.communicate()
    assert writer.returncode == 0, err[-2000:]
    assert out.strip() == "wrote 45" and opened > 3
    assert counts == sorted(counts)
    assert Index.open(path).count == 45


HOLDER = """
import sys, time
from radsearch.index.commit import writing
with writing(sys.argv[1]):
    print("locked", flush=True)
    time.sleep(120)
"""


def test_a_second_writer_is_refused_and_a_crash_does_not_leave_the_lock(tmp_path, capsys):
    """Case 12: "index is being written by PID N" while a writer lives; none after kill -9."""
    path = small_index(tmp_path / "idx")
    src = pngs(tmp_path / "src", 2)
    holder = script(tmp_path, HOLDER, path)
    assert holder.stdout.readline().strip() == "locked"
    argv = ["index", str(src), "--out", str(path), "--no-progress", "--workers", "0"]
    assert main(argv) == 1
    assert f"index is being written by PID {holder.pid}" in capsys.readouterr().err
    assert main(["remove", str(path), "i0.png"]) == 1  # every writer, not only index
    assert Index.open(path).count == 5  # readers are not refused
    holder.kill()
    holder.wait(30)
    assert main(argv) == 0
    assert Index.open(path).count == 7


CRASH_AFTER_COMMIT = """
import os, sys
import radsearch.index.core as core
from radsearch.io.sources import iter_source
from radsearch.pipeline import build_index
calls = []
real_save, real_recover = core.Index.save, core.recover
def save_then_die(self, **kw):
    real_save(self, **kw)
    os._exit(9)
def recover_then_die(path):
    calls.append(path)
    if len(calls) == 2:  # the second is the roll-forward right after the commit rename
        os._exit(9)
    real_recover(path)
if sys.argv[3] == "after-save":
    core.Index.save = save_then_die
else:
    core.recover = recover_then_die
build_index(iter_source(sys.argv[1]), sys.argv[2], workers=0, progress=False)
"""


@pytest.mark.parametrize("when", ["after-save", "inside-commit"])
def test_a_crash_after_the_commit_leaves_no_stale_work_folder(tmp_path, when):
    """Case 13: ``.work`` is gone after a crash after (or during) the commit's roll-forward."""
    src = pngs(tmp_path / "src", 3)
    out = tmp_path / "idx"
    proc = script(tmp_path, CRASH_AFTER_COMMIT, src, out, when)
    _, err = proc.communicate(timeout=240)
    assert proc.returncode == 9, err[-2000:]
    index = Index.open(out)
    assert index.count == 3
    assert not (out / ".work").exists() and not (out / ".commit").exists()
