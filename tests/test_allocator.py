import subprocess
import sys

import pytest

from tests.conftest import REPO_ROOT

# A child process frees and reallocates 8 blocks of 3 MiB (a forward pass's activations,
# in small) 20 times, and prints the page faults per round after the first.
ROUNDS = """
import resource, sys
import numpy as np
from utils.allocator import keep_freed_memory
print(keep_freed_memory() if sys.argv[1] == "keep" else "default")
def round_trip():
    blocks = [np.ones(3 << 20, np.uint8) for _ in range(8)]
    del blocks
round_trip()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(20):
    round_trip()
print((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 20)
"""


def faults_per_round(mode, **environment):
    result = subprocess.run(
        [sys.executable, "-c", ROUNDS, mode], cwd=REPO_ROOT, capture_output=True, text=True,
        timeout=60, env={"PATH": "/usr/bin:/bin", **environment},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    answer, faults = result.stdout.split()
    return answer, float(faults)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_freed_activations_are_reused_without_page_faults():
    # glibc's defaults: the 24 MiB go back to the OS and fault in again every round
    # (6,144 pages of 4 KiB; at least half of them, whatever glibc's version).
    answer, faults = faults_per_round("default")
    assert answer == "default" and faults > 3000
    assert faults_per_round("keep") == ("True", 0.0)
    # The user's own glibc setting wins: nothing is changed.
    answer, faults = faults_per_round("keep", MALLOC_TRIM_THRESHOLD_="131072")
    assert answer == "False" and faults > 3000
