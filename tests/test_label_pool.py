"""Colabator's optimal label pool (corun.colabator.label_pool): the replace-only-if-both-better rule,
storage and reopening, history, rollback for exact resume, SIGKILL during writes, and two torchrun
ranks sharing one pool."""
from __future__ import annotations

import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from corun.colabator.label_pool import LabelPool, PoolError, accept, compare_tables, safe_name

REPO = Path(__file__).resolve().parents[1]


def batch(values, size=(8, 12)):
    """Constant labels / transmissions / weights, one value per image (exact in uint8: k/255)."""
    v = torch.tensor(values, dtype=torch.float32).view(-1, 1, 1, 1)
    labels = v.expand(-1, 3, *size).contiguous()
    return labels, labels[:, :1].contiguous(), labels[:, :1].contiguous() * 0.5


def offer(pool, names, values, q, h, iteration, rank=0, size=(8, 12)):
    labels, trans, weights = batch(values, size)
    return pool.update(names, labels, trans, q, h, weights, iteration=iteration, rank=rank)


def test_replace_only_if_both_scores_are_at_least_as_good(tmp_path):
    pool = LabelPool.open(tmp_path / "pool")
    names = ["q_up_h_down", "both_up", "equal", "q_down_h_up"]
    first = [k / 255 for k in (10, 20, 30, 40)]
    labels, trans, weights, accepted = offer(pool, names, first, [0.5] * 4, [0.5] * 4, iteration=1)
    assert accepted.tolist() == [True] * 4                                       # first sight: stored
    assert torch.equal(labels, batch(first)[0])
    second = [k / 255 for k in (11, 21, 31, 41)]
    labels, trans, weights, accepted = offer(pool, names, second, [0.6, 0.6, 0.5, 0.4], [0.4, 0.7, 0.5, 0.6],
                                             iteration=2)
    assert accepted.tolist() == [False, True, True, False]
    expect = [first[0], second[1], second[2], first[3]]                          # kept, replaced, replaced, kept
    assert torch.allclose(labels, batch(expect)[0]) and torch.allclose(weights, batch(expect)[2], atol=2.5e-4)
    stored = {n: pool.get(n) for n in names}
    assert [stored[n].iteration for n in names] == [1, 2, 2, 1]
    assert stored["both_up"].q == pytest.approx(0.6) and stored["both_up"].h == pytest.approx(0.7)
    assert stored["q_up_h_down"].q == 0.5                                        # scores of the kept entry

    hist = pool.history()
    assert hist["accepted"].dtype == bool and len(hist) == 8
    assert hist["accepted"].tolist() == [True] * 4 + [False, True, True, False]
    assert hist["reason"].tolist()[4:] == ["kept", "both_better", "both_better", "kept"]
    assert hist["old_q"].isna().sum() == 4 and hist.loc[4, "old_q"] == 0.5 and hist.loc[4, "new_q"] == 0.6


def test_the_replacement_rule_is_a_pure_function():
    assert accept(None, (0.0, 0.0))                            # a first label is always stored
    assert accept((0.5, 0.5), (0.5, 0.5))                      # equal on both: replaced
    assert accept((0.5, 0.5), (0.6, 0.9))
    assert not accept((0.5, 0.5), (0.6, 0.4))                  # better quality, hazier: kept
    assert not accept((0.5, 0.5), (0.4, 0.6))


def test_the_pool_follows_accept_on_random_scores(tmp_path):
    pool = LabelPool.open(tmp_path / "pool")
    rng = random.Random(3)
    stored = None
    for it in range(1, 25):
        q, h = round(rng.random(), 3), round(rng.random(), 3)
        _, _, _, accepted = offer(pool, ["x"], [it / 255], [q], [h], iteration=it)
        assert bool(accepted[0]) == accept(stored, (q, h)), it
        if accepted[0]:
            stored = (q, h)
    assert (pool.get("x").q, pool.get("x").h) == stored


def test_labels_without_transmission(tmp_path):
    """The generic Colabator (a network without T): entries have no ``trans``, and a pool cannot mix."""
    pool = LabelPool.open(tmp_path / "pool")
    labels, _, weights = batch([10 / 255, 20 / 255])
    out, trans, w, accepted = pool.update(["a", "b"], labels, None, [0.5, 0.5], [0.5, 0.5], weights, iteration=1)
    assert trans is None and accepted.all() and torch.equal(out, labels)
    torch.testing.assert_close(w, weights, rtol=0, atol=2.5e-4)  # float16 storage
    assert pool.get("a").trans is None and pool.get("a").label.shape == (3, 8, 12)
    assert all("trans" not in torch.load(p, weights_only=True) for p in (tmp_path / "pool").rglob("*.pt"))
    out, trans, _, accepted = pool.update(["a", "b"], labels * 0, None, [0.4, 0.6], [0.6, 0.6], weights,
                                          iteration=2)
    assert accepted.tolist() == [False, True] and trans is None
    assert torch.equal(out[0], labels[0]) and torch.equal(out[1], labels[1] * 0)
    with pytest.raises(PoolError, match="without a transmission"):
        offer(pool, ["a"], [0.0], [0.0], [0.0], iteration=3)  # a CORUN-like batch on a pool without T


def test_storage_names_precision_and_reopen(tmp_path):
    root = tmp_path / "pool"
    pool = LabelPool.open(root)
    names = ["RTTS/BD_Baidu_074.png", "a b/ü,\"x\".jpg", "../../escape.png", ".hidden", "line\nbreak.png"]
    g = torch.Generator().manual_seed(0)
    labels, trans, weights = (torch.rand(5, c, 16, 20, generator=g) for c in (3, 1, 1))
    out = pool.update(names, labels, trans, torch.rand(5, generator=g), torch.rand(5, generator=g), weights,
                      iteration=7, rank=3)
    assert (out[0] - labels).abs().max() <= 1 / 510 + 1e-6                       # uint8 labels
    assert (out[1] - trans).abs().max() <= 2.5e-4 and (out[2] - weights).abs().max() <= 2.5e-4   # fp16
    folders = sorted(p.name for p in (root / "entries").iterdir())
    assert folders == sorted(safe_name(n) for n in names) and not any(f.startswith(".") for f in folders)
    assert len(set(folders)) == 5 and not (tmp_path / "escape.png").exists()
    assert len(pool) == 5 and names[1] in pool and "other.png" not in pool and pool.get("other.png") is None
    assert pool.names() == sorted(names)

    again = LabelPool.open(root)                                                 # a fresh process view
    for i, name in enumerate(names):
        e = again.get(name)
        assert e.name == name and e.iteration == 7 and e.rank == 3
        assert torch.equal(e.label, out[0][i]) and torch.equal(e.trans, out[1][i]) and torch.equal(e.weight, out[2][i])
    assert again.table().equals(pool.table()) and len(again) == 5
    hist = again.history()
    assert sorted(hist["name"]) == sorted(n.replace("\n", "\\n") for n in names) and set(hist["rank"]) == {3}
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "x.txt").write_text("x")
    with pytest.raises(PoolError, match="not a label pool"):
        LabelPool.open(tmp_path / "junk")


def test_size_change_backwards_iteration_and_bad_input(tmp_path):
    pool = LabelPool.open(tmp_path / "pool")
    offer(pool, ["a"], [0.2], [0.9], [0.9], iteration=1)
    with pytest.warns(UserWarning, match="fixed size"):
        _, _, _, accepted = offer(pool, ["a"], [0.4], [0.1], [0.1], iteration=2, size=(10, 10))
    assert accepted.tolist() == [True] and pool.get("a").label.shape == (3, 10, 10)
    assert pool.history()["reason"].tolist() == ["new", "shape_changed"]
    with pytest.raises(PoolError, match="rollback"):
        offer(pool, ["a"], [0.4], [1.0], [1.0], iteration=1, size=(10, 10))
    with pytest.raises(ValueError, match="non-finite"):
        offer(pool, ["b"], [0.4], [float("nan")], [1.0], iteration=3)
    with pytest.raises(ValueError, match="trans"):
        pool.update(["b"], torch.rand(1, 3, 4, 4), torch.rand(1, 1, 4, 5), [1.0], [1.0], torch.rand(1, 1, 4, 4), 3)


def test_rollback_restores_the_pool_of_a_checkpoint_and_prune_keeps_it(tmp_path):
    pool = LabelPool.open(tmp_path / "pool")
    names = ["a", "b", "c"]
    for it in range(1, 4):                                                       # scores rise: all accepted
        offer(pool, names[:2], [it / 255] * 2, [it / 10] * 2, [it / 10] * 2, iteration=it)
    at_3 = pool.table()
    assert at_3["versions"].tolist() == [3, 3]
    assert pool.prune(keep_from=3) == 4 and pool.table()["versions"].tolist() == [1, 1]
    offer(pool, names, [0.9] * 3, [0.95] * 3, [0.95] * 3, iteration=4, rank=1)
    offer(pool, names, [0.8] * 3, [0.1, 0.99, 0.99], [0.99] * 3, iteration=5)
    diff = compare_tables(at_3, pool.table())
    assert diff.set_index("name")["status"].to_dict() == {"a": "replaced", "b": "replaced", "c": "new"}
    assert pool.table(as_of=3).drop(columns="versions").equals(at_3.drop(columns="versions"))

    report = pool.rollback(3, expected=at_3.to_dict("list"))
    assert report["removed_versions"] == 5 and report["removed_names"] == 1 and report["dropped_history"] == 6
    assert pool.table().drop(columns="versions").equals(at_3.drop(columns="versions"))
    assert "c" not in pool and len(pool) == 2
    assert pool.history()["iteration"].max() == 3
    assert torch.allclose(pool.get("a").label, torch.full((3, 8, 12), 3 / 255))
    # after resuming, the same offers give the same decisions as the uninterrupted run
    assert offer(pool, names, [0.9] * 3, [0.95] * 3, [0.95] * 3, iteration=4)[3].all()

    pool.prune(keep_from=4)                                                      # drops the versions of 3
    with pytest.raises(PoolError, match="pruned"):
        pool.rollback(3, expected=at_3)


def test_torn_history_rows_are_skipped_and_truncated(tmp_path):
    pool = LabelPool.open(tmp_path / "pool")
    offer(pool, ["a"], [0.1], [0.5], [0.5], iteration=1)
    with open(tmp_path / "pool" / "history" / "history_rank0.csv", "ab") as f:
        f.write(b'2,"half a na')                                                 # a process killed mid-row
    offer(pool, ["a,b"], [0.1], [0.5], [0.5], iteration=3)
    hist = pool.history()
    assert hist["name"].tolist() == ["a", "a,b"] and hist["iteration"].tolist() == [1, 3]
    assert pool.truncate_history(after_iteration=2) == 2 and pool.history()["name"].tolist() == ["a"]


WRITER = """
import sys, torch
from corun.colabator.label_pool import LabelPool
pool = LabelPool.open(sys.argv[1])
names = ["scene/%d.png" % i for i in range(4)]
it = int(sys.argv[2])
while True:
    it += 1
    v = torch.full((4, 3, 160, 160), (it % 200) / 255)
    pool.update(names, v, v[:, :1], [float(it)] * 4, [float(it)] * 4, v[:, :1], iteration=it)
    if it == int(sys.argv[2]) + 1:
        print("ready", flush=True)
"""


@pytest.mark.slow
def test_pool_survives_sigkill_during_writes(tmp_path):
    root = tmp_path / "pool"
    script = tmp_path / "writer.py"
    script.write_text(WRITER)
    rng = random.Random(0)
    for round_ in range(3):
        proc = subprocess.Popen([sys.executable, str(script), str(root), str(round_ * 1_000_000)],
                                stdout=subprocess.PIPE, cwd=REPO, env={**os.environ, "OMP_NUM_THREADS": "1"})
        try:
            assert proc.stdout.readline().strip() == b"ready"
            time.sleep(rng.uniform(0.02, 0.4))
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=60)
            proc.stdout.close()

    pool = LabelPool.open(root)
    entries = root / "entries"
    (next(entries.iterdir()) / ".0000000009.pt.stray.tmp").write_bytes(b"half a file")   # as left by a kill
    assert len(pool) == 4 and pool.names() == [f"scene/{i}.png" for i in range(4)]
    versions = sorted(entries.glob("*/*.pt"))
    assert len(versions) >= 4 * 3                                                 # every round wrote
    for path in versions:                                                         # every version complete
        payload = torch.load(path, weights_only=True)
        it = int(path.stem)
        assert payload["iteration"] == it and payload["label"].shape == (3, 160, 160)
        assert (payload["label"] == it % 200).all() and payload["q"] == float(it)
    newest = max(int(p.stem) for p in versions)
    for name in pool.names():
        e = pool.get(name)
        assert newest - 1 <= e.iteration <= newest
        assert torch.allclose(e.label, torch.full_like(e.label, (e.iteration % 200) / 255))
    hist = pool.history()                                                         # torn rows skipped
    assert hist["accepted"].all() and len(hist) >= 4 * 3
    logged = hist.groupby("name")["iteration"].max()                              # rows follow their entries
    assert all(logged[n] <= pool.get(n).iteration for n in pool.names())
    report = pool.rollback(newest)                                                # resume: clears temp files
    assert report["removed_temp"] >= 1 and not list(entries.glob("*/.*.tmp"))


DDP_SCRIPT = """
import json, sys, torch, torch.distributed as dist
from datetime import timedelta
from corun.colabator.label_pool import LabelPool
dist.init_process_group("gloo", timeout=timedelta(seconds=60))
rank = dist.get_rank()
pool = LabelPool.open(sys.argv[1])
name = "URHI/some dir/photo 1.jpg"
lab = lambda v: torch.full((1, 3, 32, 32), v)
if rank == 0:
    pool.update([name], lab(0.2), lab(0.2)[:, :1], [0.5], [0.5], lab(1.0)[:, :1], iteration=1, rank=0)
    before = pool.table().to_dict("list")          # fills rank 0's metadata cache
dist.barrier()
if rank == 1:
    out = pool.update([name], lab(0.6), lab(0.6)[:, :1], [0.7], [0.8], lab(1.0)[:, :1], iteration=2, rank=1)
    assert out[3].item()
dist.barrier()
if rank == 0:
    e = pool.get(name)
    h = pool.history()
    json.dump({"before": before["iteration"], "iteration": e.iteration, "rank": e.rank, "label": e.label.mean().item(),
               "table": pool.table()["iteration"].tolist(), "len": len(pool), "ranks": h["rank"].tolist(),
               "accepted": h["accepted"].tolist()}, open(sys.argv[2], "w"))
dist.barrier()
dist.destroy_process_group()
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_torchrun_ranks_share_one_pool(tmp_path):
    script, out = tmp_path / "ddp_pool.py", tmp_path / "seen_by_rank0.json"
    script.write_text(DDP_SCRIPT)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(free_port()), str(script), str(tmp_path / "pool"), str(out)]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=180,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    seen = json.loads(out.read_text())
    assert seen["before"] == [1]
    assert seen["iteration"] == 2 and seen["rank"] == 1 and seen["label"] == pytest.approx(153 / 255)
    assert seen["table"] == [2] and seen["len"] == 1
    assert seen["ranks"] == [0, 1] and seen["accepted"] == [True, True]
