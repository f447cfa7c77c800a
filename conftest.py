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
