"""Every flan_jax module imports without the optional plotting dependency."""

import json
import os
import subprocess
import sys

# Run in a fresh interpreter: this pytest process may already hold matplotlib.
_IMPORT_ALL_WITHOUT_MATPLOTLIB = """
import importlib, json, pkgutil, sys
sys.modules["matplotlib"] = None  # `import matplotlib` (and any submodule) now fails
try:
    import matplotlib.figure
    blocked = False
except ImportError:
    blocked = True
import flan_jax, flan_jax.tasks
names, failures = [], {}
for package in (flan_jax, flan_jax.tasks):
    for module in pkgutil.walk_packages(package.__path__, package.__name__ + "."):
        names.append(module.name)
        try:
            importlib.import_module(module.name)
        except Exception as error:
            failures[module.name] = repr(error)
print(json.dumps({"blocked": blocked, "names": names, "failures": failures}))
"""


def test_every_module_imports_without_matplotlib():
    result = subprocess.run(
        [sys.executable, "-c", _IMPORT_ALL_WITHOUT_MATPLOTLIB],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "JAX_PLATFORMS": "cpu"},
    )
    assert result.returncode == 0, result.stderr[-4000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["blocked"], "the guard did not block matplotlib"
    # Spot-check that the walk reached every layer, so an empty walk cannot pass.
    for name in (
        "flan_jax.cli.distill",
        "flan_jax.distill.train_student",
        "flan_jax.training.metrics",
        "flan_jax.models.t5",
        "flan_jax.tasks.mixtures",
    ):
        assert name in report["names"]
    assert report["failures"] == {}
