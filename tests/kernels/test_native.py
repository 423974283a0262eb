"""kernels.native: a wheel carries every native source, and each library builds from its installed files."""
import zipfile

import pytest

from kernels.native import COMMON_HEADER
from kernels.routing import native as routing_native
from kernels.selective_scan import native as scan_native


@pytest.mark.slow
def test_wheel_carries_the_native_sources(tmp_path):
    """pip installs a wheel: the C++ sources and the shared header must be in it, or the loops never build."""
    import subprocess
    import sys
    from pathlib import Path
    root = Path(__file__).resolve().parents[2]
    subprocess.run([sys.executable, '-m', 'pip', 'wheel', '--no-deps', '--no-build-isolation', '-w', str(tmp_path),
                    str(root)], check=True, capture_output=True, timeout=600)
    wheel, = tmp_path.glob('*.whl')
    names = set(zipfile.ZipFile(wheel).namelist())
    for path in (scan_native.LOOP.source, routing_native.LOOP.source, COMMON_HEADER):
        assert str(Path(path).relative_to(root)) in names
