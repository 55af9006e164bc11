"""Worker for tests/test_checkpoint_safety.py: forks savers that SIGKILL themselves at the k-th file-system
call of a save and checks, after each death, which checkpoint loads. Prints a JSON summary."""
import gc
import json
import os
import random
import shutil
import signal
import sys

import torch

torch.set_num_threads(1)

import sdekit  # noqa: E402
import sdekit.checkpoint as C  # noqa: E402
import sdekit.checkpoint.storage as storage  # noqa: E402
from sdekit.nets import MLP  # noqa: E402

# A SIGKILL leaves the page cache intact, so durability is not what is tested here: fsync is made a
# no-op (still counted as a kill point) to keep the few hundred saves fast.
os.fsync = lambda fd: None

ROOT = sys.argv[1]
TARGET = os.path.join(ROOT, "ck")
OPS = ("open", "write", "fsync", "close", "rename", "replace", "mkdir", "rmdir", "unlink", "link", "chmod")
FOREIGN = b"samples of the user, not part of the checkpoint"


torch.manual_seed(0)
NET = MLP(dim=2, width=16, depth=1)
BASE = {k: t.clone() for k, t in NET.state_dict().items()}


def content(v):
    """Checkpoint number v: weights, EMA and state that differ for every v."""
    NET.load_state_dict({k: t + v for k, t in BASE.items()})
    ema = {k: t + 2 * v for k, t in BASE.items()}
    return NET, ema, {"v": torch.full((7,), float(v))}


def save(v):
    net, ema, state = content(v)
    C.save_checkpoint(TARGET, net, sdekit.VPSDE(), "eps", step=v, ema=ema, state=state,
                      files={"loss.png": bytes([v % 256]) * (300 + v % 7)})


def loadable():
    """The number of the checkpoint that loads, None if none does, or 'corrupt' if it loads mixed."""
    try:
        cfg, model, ema, state = C.read_checkpoint(TARGET)
    except ValueError:
        return None
    v = cfg["step"]
    net, ema_v, state_v = content(v)
    same = all(torch.equal(model[k], t) for k, t in net.state_dict().items()) and \
        all(torch.equal(ema[k], t) for k, t in ema_v.items()) and torch.equal(state["v"], state_v["v"])
    return v if same else "corrupt"


def killed_save(v, k):
    """Save checkpoint v in a child that SIGKILLs itself at its k-th file-system call. True if it died."""
    content(v)  # in the parent: the child only saves
    pid = os.fork()
    if pid == 0:
        count = [0]

        def wrap(fn):
            def call(*a, **kw):
                count[0] += 1
                if count[0] == k:
                    os.kill(os.getpid(), signal.SIGKILL)
                return fn(*a, **kw)
            return call

        for name in OPS:
            setattr(os, name, wrap(getattr(os, name)))
        try:
            save(v)
            code = 0
        except BaseException:
            code = 3
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    if os.WIFSIGNALED(status):
        assert os.WTERMSIG(status) == signal.SIGKILL
        return True
    assert os.WEXITSTATUS(status) == 0, status
    return False


def leftovers():
    return sorted(n for n in os.listdir(ROOT) if n not in ("ck", ".ck.lock"))


def reset():
    for n in os.listdir(ROOT):
        p = os.path.join(ROOT, n)
        shutil.rmtree(p) if os.path.isdir(p) else os.unlink(p)


gc.freeze()  # fewer copy-on-write pages touched by each forked child
failures, points = [], {}
version = [100]


def fresh_version():
    version[0] += 1
    return version[0]


def enumerate_kills(name, first_save=False, foreign=False, chunk=1 << 20):
    """Kill one save at each of its file-system calls in turn, from a clean state each time."""
    storage.WRITE_CHUNK = chunk
    k = 0
    while True:
        k += 1
        reset()
        prev = None
        if not first_save:
            prev = fresh_version()
            save(prev)
            if foreign:
                with open(os.path.join(TARGET, "samples.png"), "wb") as f:
                    f.write(FOREIGN)
        new = fresh_version()
        died = killed_save(new, k)
        got = loadable()
        if got not in (prev, new) or (not died and got != new):
            failures.append(f"{name} k={k}: loaded {got!r}, expected {prev!r} or {new!r} (died={died})")
        # the next save recovers whatever the dead one left, and leaves nothing behind
        after = fresh_version()
        save(after)
        if loadable() != after or leftovers():
            failures.append(f"{name} k={k}: save after the kill gave {loadable()!r}, leftovers {leftovers()}")
        if foreign and open(os.path.join(TARGET, "samples.png"), "rb").read() != FOREIGN:
            failures.append(f"{name} k={k}: the user's samples.png was lost")
        if not died:
            points[name] = k - 1
            return


def chained_kills(n, seed=0):
    """Kill saves at random calls one after another, without cleaning up: each save must recover the
    last one's debris (and may itself die while recovering)."""
    storage.WRITE_CHUNK = 512
    reset()
    rng = random.Random(seed)
    prev = fresh_version()
    save(prev)
    kills = 0
    for _ in range(n):
        new = fresh_version()
        died = killed_save(new, rng.randint(1, 100))
        kills += died
        got = loadable()
        if got not in (prev, new) or (not died and got != new):
            failures.append(f"chained: loaded {got!r}, expected {prev!r} or {new!r} (died={died})")
        prev = got
    points["chained"] = kills


def concurrent_writers(n_proc=3, saves=6):
    """Writers of one checkpoint serialise on its lock: none crashes, the last commit loads."""
    storage.WRITE_CHUNK = 1 << 20
    reset()
    pids = []
    for p in range(n_proc):
        pid = os.fork()
        if pid == 0:
            code = 0
            try:
                for i in range(saves):
                    save(10_000 + 100 * p + i)
            except BaseException:
                code = 4
            os._exit(code)
        pids.append(pid)
    codes = [os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) for pid in pids]
    got = loadable()
    if codes != [0] * n_proc or not isinstance(got, int) or got < 10_000 or leftovers():
        failures.append(f"concurrent writers: exit codes {codes}, loaded {got!r}, leftovers {leftovers()}")


enumerate_kills("overwrite")
enumerate_kills("overwrite, small writes, a foreign file", foreign=True, chunk=256)
enumerate_kills("first save", first_save=True)
chained_kills(40)
concurrent_writers()
print(json.dumps({"failures": failures[:20], "n_failures": len(failures), "points": points}))
