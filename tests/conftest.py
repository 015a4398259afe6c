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


@pytest.fixture(autouse=True)
def steady_rates(monkeypatch):
    """Tests compare estimates made minutes apart, which assume one cached machine rate: a rate read while other work
    shared the cores would be measured again after two minutes (cost.LOADED_FRACTION; test_eval_cost sets it back)."""
    from ctxext.evals import cost

    monkeypatch.setattr(cost, "LOADED_FRACTION", 0.0)
