"""Fixtures shared by the command-line tests: a tiny generated dataset and a run trained on it."""
import pytest

from fcos_lib.cli import main
from fcos_lib.course_data import make_course_dataset

# A run of a few seconds: 64-px inputs, batches of 2, 3 iterations, on the CPU.
TINY_TRAIN = ["--image-size", "64", "--batch-size", "2", "--iters", "3", "--device", "cpu"]


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    return make_course_dataset(tmp_path_factory.mktemp("data") / "voc", num_train=6, num_val=3, seed=1)


@pytest.fixture(scope="module")
def trained(tiny_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    assert main(["train", "--data", str(tiny_data), "--out", str(out), *TINY_TRAIN]) == 0
    return out
