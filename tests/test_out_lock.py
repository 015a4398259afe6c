"""One writer per --out: a second eval, train or search into a folder another run is writing is refused in one line
(a second eval --resume rewrote the first's cells away and both exited 0; train's saves deleted each other's staging
folder). The lock dies with its process, and a refused run leaves no folder behind."""

import multiprocessing as mp
from pathlib import Path

import pytest

from ctxext.errors import CtxextError
from ctxext.evals import run_eval
from ctxext.fixtures import TRAIN_BOOKS, books_dir
from ctxext.lock import LOCK, out_lock
from ctxext.search import SearchConfig, run_search
from ctxext.train import TrainConfig, loop

pytestmark = pytest.mark.usefixtures("one_thread")


def _hold(out: str, ready, done) -> None:
    with out_lock(out, "eval"):
        ready.set()
        done.wait(60)


@pytest.fixture
def held(tmp_path):
    """`tmp_path/run` locked by another process for the test's duration."""
    ctx = mp.get_context("spawn")
    ready, done = ctx.Event(), ctx.Event()
    p = ctx.Process(target=_hold, args=(str(tmp_path / "run"), ready, done))
    p.start()
    assert ready.wait(60)
    yield tmp_path / "run"
    done.set()
    p.join(60)


def test_eval_train_and_search_refuse_a_folder_another_run_writes(held):
    book = str(books_dir() / TRAIN_BOOKS[2])
    runs = [lambda: run_eval("tiny-rope", ["default"], ["passkey"], [256], depths=[0.5], samples=1, out=held),
            lambda: loop.train(TrainConfig(model="tiny-rope", scaling="yarn:factor=2", data=(book,), seq_len=512,
                                           steps=2, lr=1e-3, batch_tokens=1024, warmup=1, evaluate=False,
                                           out=str(held), resume=True), progress=False),
            lambda: run_search("tiny-rope", [book], held, SearchConfig(target=512), resume=True, progress=False)]
    for run in runs:
        with pytest.raises(CtxextError, match=r"is being written by another run \(ctxext eval, pid \d+\)") as e:
            run()
        assert "\n" not in str(e.value)
    assert not (held / "results.json").exists()


def test_the_lock_goes_with_its_run(tmp_path):
    out = tmp_path / "run"
    with pytest.raises(CtxextError):  # refused before writing anything: no folder is left
        run_eval("tiny-rope", ["no-such-method"], ["passkey"], [256], out=out)
    assert not out.exists()
    run_eval("tiny-rope", ["default"], ["passkey"], [256], depths=[0.5], samples=1, out=out)
    with out_lock(out, "eval"):  # released when the run ended
        assert (out / LOCK).read_text().startswith("ctxext eval, pid")
    res = run_eval("tiny-rope", ["default"], ["passkey"], [256, 512], depths=[0.5], samples=1, out=out, resume=True)
    assert len(res["records"]) == 2 and sorted(p.name for p in Path(out).iterdir())[:1] == [LOCK]
