import os

import pytest
import torch

# Nothing in the test suite may reach a model hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models run many small ops: one intra-op thread never waits on a busy second core. Modules that run
    them say `pytestmark = pytest.mark.usefixtures("one_thread")`."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="session")
def rates_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("rates")


@pytest.fixture(autouse=True)
def steady_rates(monkeypatch, rates_dir):
    """Tests compare estimates made minutes apart, which assume one cached machine rate: a rate read while other work
    shared the cores would be measured again after two minutes (cost.LOADED_FRACTION; test_eval_cost sets it back).
    Their rates live in a file of the test session's own: one read under a test's load, kept an hour, skewed the
    estimates of the next benchmark run (5x)."""
    from ctxext.evals import cost

    monkeypatch.setattr(cost, "LOADED_FRACTION", 0.0)
    monkeypatch.setattr(cost, "cache_root", lambda: rates_dir)
