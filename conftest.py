"""Test configuration shared by the unit tests and the notebook run (nbval).

The offline switch is set here, before any kernel starts, so that a plain
`pytest --nbval notebooks/` anywhere runs the short CPU course: no downloads, no
pretrained weights, the generated course dataset. Set FCOS_OFFLINE=0 yourself to run the
full recipe (e.g. on a GPU with internet).
"""
import os

os.environ.setdefault("FCOS_OFFLINE", "1")

# Under `pytest -n N` the N workers (and the notebook kernels they start) share the machine's
# cores. With torch's default of one OpenMP thread per core in every worker, the workers' threads
# spin against each other: chapter 09's 60-iteration training cell took 373 s beside another
# worker, against about 35 s alone. One intra-op thread per worker keeps the cores shared fairly.
if "PYTEST_XDIST_WORKER" in os.environ:
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ.setdefault("MKL_NUM_THREADS", "1")

# Under `pytest -n 2 --dist loadfile --no-loadscope-reorder` (make test) each file runs on one
# worker, in the order of this list. The two longest files each train the main job for minutes:
# chapter 09 under nbval (the offline mode) and chapter 09 as a learner opens it (the course mode,
# tests/test_learner_lane_09.py). They go first, one per worker, and the rest follows, largest file
# first. (xdist's own reordering, by the number of tests in a file, would start the one-test
# learner lane last, after everything else, and add its minutes to the end of the run.)
SLOWEST_FIRST = ("notebooks/09_train_eval.ipynb", "tests/test_learner_lane_09.py")


def pytest_collection_modifyitems(config, items):
    files = [item.nodeid.split("::")[0] for item in items]
    count = {f: files.count(f) for f in set(files)}

    def order(pair):
        file = pair[1]
        return (SLOWEST_FIRST.index(file) if file in SLOWEST_FIRST else len(SLOWEST_FIRST), -count[file], file)

    items[:] = [item for item, _ in sorted(zip(items, files), key=order)]
