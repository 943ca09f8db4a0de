"""Shared pytest setup: CPU only, offline, and the `slow` / `gpu` markers."""

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def pytest_collection_modifyitems(config, items):
    run_slow = os.environ.get("RUN_SLOW") == "1"
    skip_slow = pytest.mark.skip(reason="needs real weights: set RUN_SLOW=1")
    for item in items:
        if "slow" in item.keywords and not run_slow:
            item.add_marker(skip_slow)
        if "gpu" in item.keywords:
            import torch

            if not torch.cuda.is_available():
                item.add_marker(pytest.mark.skip(reason="needs CUDA"))


@pytest.fixture(scope="session")
def tiny_world_pipeline(tmp_path_factory):
    """A world text-to-image pipeline trained for 3 steps with the `tiny` profile (seconds).

    It draws noise, not shapes: use it to test plumbing (loading, seeding, outputs), not quality.
    """
    from selfcorrect.train import world_t2i

    out = tmp_path_factory.mktemp("tiny-world-t2i")
    args = world_t2i.parse_args(["--profile", "tiny", "--output-dir", str(out), "--no-progress"])
    return world_t2i.main(args)
