"""Test configuration shared by the unit tests and the notebook run (nbval).

The offline switch is set here, before any kernel starts, so that a plain
`pytest --nbval notebooks/` anywhere runs the short CPU course: no downloads, no
pretrained weights, the generated course dataset. Set FCOS_OFFLINE=0 yourself to run the
full recipe (e.g. on a GPU with internet).
"""
import os

os.environ.setdefault("FCOS_OFFLINE", "1")
