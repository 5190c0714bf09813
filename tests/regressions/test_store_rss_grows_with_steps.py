"""Store mode's peak RSS grew with the run length: a user measured 1.49 GB for a
1.2M-parameter CNN recorded through ``RegularitySession`` against 0.63 GB without
trajreg, and its trajectory file showed 1.78 GB apparent for 128 MB used.

The cause: ``TrajectoryStore.row`` returned views into ``np.load(mmap_mode="r")``
memmaps, and the session's ``finish`` reads every x_t through it to rebuild l_t(x_t),
so every page of the trajectory ended up mapped and resident (RssFile, T d 4 bytes);
and the segment file was preallocated for 4096 rows (the default capacity of a
``Recorder`` that does not know the run length), never cut to the rows written.

Each run here happens in a fresh process (forked by a shell that does not exec it,
so it does not inherit this process's RSS high-water mark) and reports its own
``ru_maxrss``. The MLP has d = 150k parameters, so 40 epochs (880 steps) write
530 MB of trajectory: a mapped trajectory would add about 400 MB to the 40-epoch peak
over the 10-epoch one, against a baseline of 500-700 MB.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import trajreg

ROOT = Path(trajreg.__file__).resolve().parents[1]  # the code under test, in the child too
WIDTH = 256  # 64*256 + 2*256*256 + 256*10 weights: d = 150k

CHILD = textwrap.dedent("""
    import json, resource, sys
    from pathlib import Path

    import torch

    torch.set_num_threads(1)
    how, epochs, width, out = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), Path(sys.argv[4])
    if how == "session":  # a hand-written loop, as examples/plain_loop.py
        import torch.nn.functional as F

        from trajreg.integrations import RegularitySession
        from trajreg.train.config import DataConfig
        from trajreg.train.data import load_data

        torch.manual_seed(0)
        data = load_data(DataConfig(name="digits"))
        loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(
            data.x_train, data.y_train), batch_size=64, shuffle=True, drop_last=True)
        model = torch.nn.Sequential(
            torch.nn.Flatten(), torch.nn.Linear(64, width), torch.nn.ReLU(),
            torch.nn.Linear(width, width),
            torch.nn.ReLU(), torch.nn.Linear(width, width), torch.nn.ReLU(),
            torch.nn.Linear(width, 10))
        opt = torch.optim.SGD(model.parameters(), lr=0.05)

        def loss_fn(m, b):
            return F.cross_entropy(m(b[0]), b[1])

        session = RegularitySession(out, source="plain")
        session.start(model, opt)
        for _ in range(epochs):
            for xb, yb in loader:
                session.before_batch()
                loss = loss_fn(model, (xb, yb))
                session.after_batch((xb, yb), loss)
                opt.zero_grad()
                loss.backward()
                opt.step()
            session.end_epoch()
        session.finish(model, loss_fn)
    else:  # trajreg run
        from trajreg.run.runner import run
        from trajreg.train.config import load_config

        run(load_config({
            "seed": 0, "data": {"name": "digits", "batch_size": 64},
            "model": {"name": "mlp", "depth": 4, "width": width, "activation": "relu",
                      "norm": "none"},
            "optim": {"name": "sgd", "lr": 0.05}, "train": {"epochs": epochs},
            "record": {"mode": "store"}}), out, figures=False, progress=False)
    meta = json.loads((out / "trajectory" / "trajectory.json").read_text())
    files = [f for f in (out / "trajectory").iterdir() if f.suffix == ".npy"]
    print("RESULT " + json.dumps({
        "peak_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
        "rows": meta["rows"], "d": meta["d"],
        "apparent": sum(f.stat().st_size for f in files),
        "used": sum(f.stat().st_blocks * 512 for f in files)}))
""")


def peak(how: str, epochs: int, out: Path) -> dict:
    # "; exit $?" keeps the shell from exec'ing python (an exec'd child would start
    # from this process's high-water mark)
    cmd = ["/bin/sh", "-c", '"$@"; exit $?', "sh", sys.executable, "-c", CHILD,
           how, str(epochs), str(WIDTH), str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT,
                          env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin",
                               "OMP_NUM_THREADS": "1", "HOME": str(out.parent)},
                          timeout=600)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, proc.stdout[-2000:] + proc.stderr[-4000:]
    return json.loads(lines[-1][len("RESULT "):])


@pytest.mark.slow
@pytest.mark.parametrize("how", ["session", "run"])
def test_store_peak_rss_flat_in_run_length(tmp_path, how):
    short = peak(how, 10, tmp_path / "10")
    long = peak(how, 40, tmp_path / "40")
    assert long["rows"] * long["d"] * 4 > 400e6  # enough trajectory that mapping it shows
    ratio = long["peak_kib"] / short["peak_kib"]
    for epochs, res in ((10, short), (40, long)):  # shown with pytest -s
        print(f"{how} {epochs} epochs: {res['rows']} rows x d = {res['d']}: peak RSS "
              f"{res['peak_kib'] / 1024:.1f} MiB; trajectory files "
              f"{res['apparent'] / 2**20:.1f} MiB apparent, {res['used'] / 2**20:.1f} MiB used")
    assert ratio <= 1.1, (f"peak RSS {long['peak_kib'] / 1024:.0f} MiB at 40 epochs vs "
                          f"{short['peak_kib'] / 1024:.0f} MiB at 10: {ratio:.2f}x")
    for res in (short, long):  # the closed files hold the rows written, no more
        assert res["apparent"] <= res["rows"] * res["d"] * 4 + (64 << 10)
