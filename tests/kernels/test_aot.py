"""kernels.aot: registration checks, the offline sm_80/sm_90 build of a small kernel, and the whole report."""
import pytest
import triton
import triton.language as tl

from kernels import aot


@triton.jit
def _scaled_copy(x_ptr, y_ptr, n, scale, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    tl.store(y_ptr + offs, tl.load(x_ptr + offs, mask=mask) * scale, mask=mask)


@triton.jit
def _tile_product(a_ptr, c_ptr, BLOCK: tl.constexpr):
    rows = tl.arange(0, BLOCK)
    tile = tl.load(a_ptr + rows[:, None] * BLOCK + rows[None, :])
    tl.store(c_ptr + rows[:, None] * BLOCK + rows[None, :], tl.dot(tile, tile))


@triton.jit
def _register_hog(x_ptr, y_ptr, BLOCK: tl.constexpr):
    # a whole BLOCK-long vector live in one warp's registers: far more than 255 per thread, so ptxas spills
    offs = tl.arange(0, BLOCK)
    x = tl.load(x_ptr + offs)
    y = tl.exp(x) * tl.sum(x * x, 0) + tl.sum(tl.exp(x), 0)
    tl.store(y_ptr + offs, y)
    tl.store(y_ptr + BLOCK - 1 - offs, x * y)


_SIG = {'x_ptr': '*{dtype}', 'y_ptr': '*{dtype}', 'n': 'i32', 'scale': 'fp32', 'BLOCK': 'constexpr'}


@pytest.fixture
def registry(monkeypatch):
    monkeypatch.setattr(aot, '_REGISTRY', {})
    return aot._REGISTRY


def test_register_checks_signature_and_configs(registry):
    with pytest.raises(ValueError, match=r"parameters in order \['x_ptr', 'y_ptr', 'n', 'scale', 'BLOCK'\]"):
        aot.register('t.copy', _scaled_copy, {'x_ptr': '*fp32'}, [aot.Config({'BLOCK': 64})])
    with pytest.raises(ValueError, match="parameter 'n' has unknown type 'int'"):
        aot.register('t.copy', _scaled_copy, {**_SIG, 'n': 'int'}, [aot.Config({'BLOCK': 64})])
    with pytest.raises(ValueError, match=r"missing \['BLOCK'\]"):
        aot.register('t.copy', _scaled_copy, _SIG, [aot.Config({})])
    with pytest.raises(ValueError, match='dtypes must be a non-empty subset'):
        aot.register('t.copy', _scaled_copy, _SIG, [aot.Config({'BLOCK': 64})], dtypes=('fp8',))
    with pytest.raises(TypeError, match='needs a @triton.jit function'):
        aot.register('t.copy', lambda: None, _SIG, [aot.Config({'BLOCK': 64})])
    assert registry == {}


def test_builds_offline_for_both_archs(registry):
    aot.register('t.copy', _scaled_copy, _SIG, [aot.Config({'BLOCK': 128}, num_warps=4)], dtypes=('fp32', 'fp16'))
    reports = [aot.compile_kernel(registry['t.copy'], arch, dtype, registry['t.copy'].configs[0])
               for arch in (80, 90) for dtype in ('fp32', 'fp16')]
    assert all(r.ok for r in reports), aot.format_report(reports)
    assert all(0 < r.registers <= 255 and r.spill_bytes == 0 for r in reports)
    assert [r.wgmma for r in reports] == [None, None, False, False]  # no dot: no tensor-core code


def test_sm90_dot_uses_wgmma_and_shared_memory_is_reported(registry):
    aot.register('t.dot', _tile_product, {'a_ptr': '*{dtype}', 'c_ptr': '*{dtype}', 'BLOCK': 'constexpr'},
                 [aot.Config({'BLOCK': 64}, num_warps=4)], dtypes=('fp16',))
    kernel = registry['t.dot']
    sm80, sm90 = (aot.compile_kernel(kernel, arch, 'fp16', kernel.configs[0]) for arch in (80, 90))
    assert sm80.ok and sm90.ok, aot.format_report([sm80, sm90])
    assert sm90.wgmma is True
    assert sm90.shared_bytes > 0


def test_register_spills_are_detected(registry):
    aot.register('t.hog', _register_hog, {'x_ptr': '*{dtype}', 'y_ptr': '*{dtype}', 'BLOCK': 'constexpr'},
                 [aot.Config({'BLOCK': 8192}, num_warps=1)], dtypes=('fp32',))
    report = aot.compile_kernel(registry['t.hog'], 80, 'fp32', registry['t.hog'].configs[0])
    assert report.error is None and report.spill_bytes > 0 and not report.ok
    assert 'bytes of register spills' in aot.format_report([report])


def test_report_flags_problems():
    spilled = aot.BuildReport('k', 80, 'fp32', 'B=1', registers=255, spill_bytes=64, shared_bytes=0)
    too_big = aot.BuildReport('k', 80, 'fp32', 'B=1', registers=64, spill_bytes=0, shared_bytes=200 * 1024)
    fits_h100 = aot.BuildReport('k', 90, 'fp32', 'B=1', registers=64, spill_bytes=0, shared_bytes=200 * 1024)
    failed = aot.BuildReport('k', 90, 'fp32', 'B=1', error='CompilationError: bad')
    assert [r.ok for r in (spilled, too_big, fits_h100, failed)] == [False, False, True, False]
    text = aot.format_report([spilled, too_big, fits_h100, failed])
    assert '64 bytes of register spills' in text and 'over the sm_80 limit' in text and 'FAILED' in text
    assert text.splitlines()[-1] == '4 builds of 1 kernels: 1 ok, 3 with problems'


def test_failed_build_is_reported_not_raised(registry):
    aot.register('t.copy', _scaled_copy, _SIG, [aot.Config({'BLOCK': 100})], dtypes=('fp32',))  # not a power of 2
    report = aot.compile_kernel(registry['t.copy'], 80, 'fp32', registry['t.copy'].configs[0])
    assert not report.ok and report.error


@pytest.mark.slow
def test_every_project_kernel_builds_without_spills(capsys):
    """`python -m kernels.aot`: every registered kernel, dtype and config for sm_80 and sm_90."""
    status = aot.main([])
    out = capsys.readouterr()
    assert status == 0, out.out + out.err
    built = {line.split()[0].split('.')[0] for line in out.out.splitlines()[2:-1]}
    assert {'window', 'neighborhood', 'routing', 'selective_scan'} <= built, built
    assert out.out.splitlines()[-1].endswith(' 0 with problems')
