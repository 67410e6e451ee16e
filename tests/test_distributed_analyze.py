"""Data-parallel ``attnrhythm analyze``: 2 gloo ranks under torchrun on CPU, against one process.

Both runs use one thread per process (torchrun's default), so the kernels are the same and the
records must be equal byte for byte. The tiny random Llama with the embedded tokenizer keeps it fast.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from cli_helpers import save_tiny_llama

from attnrhythm.distributed import assign
from attnrhythm.records import InputItem, iter_jsonl, read_records
from attnrhythm.runner import Work, padding_share, plan_batches

SRC = str(Path(__file__).resolve().parents[1] / "src")
WORDS = "the cat sat on a mat and then we add two numbers to get five so the answer is".split()


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": SRC, "OMP_NUM_THREADS": "1"}


def _args(model: Path, src: Path, out: Path) -> list[str]:
    return ["-m", "attnrhythm", "analyze", "--model", str(model), "-i", str(src), "-o", str(out),
            "--batch-size", "2"]  # fmt: skip


def _single(model, src, out):
    subprocess.run([sys.executable, *_args(model, src, out)], env=_env(), check=True, capture_output=True)


def _torchrun(model, src, out, **kw):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", *_args(model, src, out)]
    return subprocess.Popen(cmd, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, **kw)


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory, embedded_dir) -> Path:
    return save_tiny_llama(tmp_path_factory.mktemp("tiny-llama"), embedded_dir, max_position_embeddings=256)


def _corpus(path: Path, n: int, seed: int = 0) -> Path:
    rng = random.Random(seed)
    with path.open("w") as fh:
        for i in range(n):
            response = " ".join(rng.choices(WORDS, k=rng.randint(4, 80)))
            line = {"id": f"t{i}", "prompt": "q " * rng.randint(1, 6), "response": response}
            fh.write(json.dumps(line) + "\n")
    return path


def _children(pid: int) -> list[int]:
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            out.append(int(stat.parent.name))
    return out


def _work(lengths: list[int]) -> list[Work]:
    return [Work(i, InputItem(i + 1, {"prompt": "p"}), None, n) for i, n in enumerate(lengths)]


def test_assign_balances_tokens_not_lines():
    costs = [100, 1, 1, 1, 1, 60, 40]
    shares = assign(costs, 2)
    loads = [sum(costs[i] for i in s) for s in shares]
    assert sorted(i for s in shares for i in s) == list(range(len(costs)))
    assert loads == [102, 102] and [len(s) for s in shares] == [3, 4]


def test_bucketing_cuts_padding_and_keeps_every_item():
    rng = random.Random(1)
    work = _work([rng.randint(10, 1000) for _ in range(64)])
    plain, bucketed = plan_batches(work, 8, bucket=False), plan_batches(work, 8)
    assert sorted(w.position for b in bucketed for w in b) == list(range(64))
    assert padding_share(bucketed) < padding_share(plain) / 3


def test_two_gloo_ranks_equal_one_process_and_a_killed_run_resumes(tiny_dir, tmp_path):
    src = _corpus(tmp_path / "in.jsonl", 40)
    _single(tiny_dir, src, tmp_path / "one.jsonl")
    single = (tmp_path / "one.jsonl").read_bytes()

    proc = _torchrun(tiny_dir, src, tmp_path / "two.jsonl")
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out.decode()
    assert (tmp_path / "two.jsonl").read_bytes() == single  # same records, input order
    assert not (tmp_path / "two.jsonl.parts").exists()

    # kill the whole launch once both ranks have written some records, then rerun it
    killed = tmp_path / "killed.jsonl"
    proc = _torchrun(tiny_dir, src, killed)
    parts = tmp_path / "killed.jsonl.parts"
    deadline = time.time() + 300
    while time.time() < deadline:
        written = [len(list(iter_jsonl(p))) for p in parts.glob("*.partial")] if parts.is_dir() else []
        if len(written) == 2 and min(written) >= 1:
            break
        time.sleep(0.2)
    for pid in _children(proc.pid):  # the ranks (torchrun starts them in sessions of their own)
        os.kill(pid, signal.SIGKILL)
    proc.kill()
    proc.wait()
    before = {r["key"] for p in parts.iterdir() for r in iter_jsonl(p)}
    assert 0 < len(before) < 40, "the run was not killed midway: raise the corpus size"
    assert not killed.exists()
    # a directory of parts is a records source as it stands
    assert {r["key"] for r in read_records(parts)} == before

    proc = _torchrun(tiny_dir, src, killed)
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out.decode()
    assert killed.read_bytes() == single
    log = out.decode()
    rewritten = sum(int(line.split("wrote ")[1].split()[0]) for line in log.splitlines() if "wrote " in line)
    assert rewritten == 40 - len(before), log  # only the missing records were written again


def test_heads_report_and_studies_read_a_directory_of_parts(capsys, tiny_dir, tmp_path):
    from cli_helpers import run

    src = _corpus(tmp_path / "in.jsonl", 6)
    merged = tmp_path / "merged.jsonl"
    _single(tiny_dir, src, merged)
    records = read_records(merged)
    parts = tmp_path / "out.jsonl.parts"  # as a killed launch leaves it: one finished part, one partial
    parts.mkdir()
    (parts / "part-00000.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records[:4]))
    torn = "".join(json.dumps(r) + "\n" for r in records[4:]) + "{\"ke"
    (parts / "part-00001.jsonl.partial").write_text(torn)
    assert sorted(r["key"] for r in read_records(parts)) == sorted(r["key"] for r in records)
    heads = {}
    for name, source in (("merged", merged), ("parts", parts)):
        code, _, err = run(capsys, "heads", source, "--out", tmp_path / f"{name}.json")
        assert code == 0, err
        heads[name] = json.loads((tmp_path / f"{name}.json").read_text())
        code, _, err = run(capsys, "report", source, "--out", tmp_path / f"{name}.html")
        assert code == 0, err
        assert "6 trace(s)" in err.replace("\n", " ")
    assert heads["merged"]["local"] == heads["parts"]["local"]
    assert heads["merged"]["global"] == heads["parts"]["global"]
