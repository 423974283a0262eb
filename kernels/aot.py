"""Offline GPU compile report: every Triton kernel of the project, built for sm_80 and sm_90 without a GPU.

Each ``kernels/<op>/triton.py`` registers its ``@triton.jit`` kernels at import with :func:`register`,
naming the argument types, the dtypes it runs in and the block configs it autotunes over. ``python -m
kernels.aot`` imports every op's triton module, compiles each (kernel, dtype, config) for each target with
``triton.compile(ASTSource(...), target=GPUTarget('cuda', arch, 32))`` and reads the cubin's resource usage
with the ``cuobjdump`` that ships with Triton. It prints one line per build (registers, spill bytes, shared
memory against the device limit, whether the sm_90 code uses wgmma) and exits non-zero on any spill,
over-limit config or compile failure. This is the project's proof that the GPU code builds where no GPU is.
"""
import argparse
import dataclasses
import importlib
import importlib.util
import os
import pkgutil
import re
import subprocess
import sys
import tempfile
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

__all__ = ['Config', 'Kernel', 'BuildReport', 'ARCHS', 'register', 'registered', 'discover', 'compile_kernel',
           'build_all', 'format_report', 'main']

# Shared memory a block may use (opt-in maximum), bytes: A100 (sm_80) 163 KiB, H100 (sm_90) 227 KiB.
ARCHS: Dict[int, int] = {80: 163 * 1024, 90: 227 * 1024}
DTYPES = ('fp32', 'fp16', 'bf16')
_SCALAR_TYPES = {'i1', 'i8', 'i16', 'i32', 'i64', 'u32', 'u64', 'fp16', 'bf16', 'fp32', 'fp64', 'constexpr'}


@dataclasses.dataclass(frozen=True)
class Config:
    """One launch configuration: the constexpr values and the launch options it is compiled with."""
    constexprs: Mapping[str, Any]
    num_warps: int = 4
    num_stages: int = 2

    def label(self) -> str:
        consts = ','.join(f'{k}={v}' for k, v in self.constexprs.items())
        return f'{consts} w{self.num_warps} s{self.num_stages}'


@dataclasses.dataclass(frozen=True)
class Kernel:
    name: str
    fn: Any
    signature: Mapping[str, str]
    dtypes: Tuple[str, ...]
    configs: Tuple[Config, ...]


@dataclasses.dataclass
class BuildReport:
    kernel: str
    arch: int
    dtype: str
    config: str
    registers: Optional[int] = None
    spill_bytes: Optional[int] = None
    shared_bytes: Optional[int] = None
    wgmma: Optional[bool] = None
    error: Optional[str] = None

    @property
    def ok(self) -> bool:
        return (self.error is None and self.spill_bytes == 0
                and self.shared_bytes is not None and self.shared_bytes <= ARCHS[self.arch])

    def problems(self) -> List[str]:
        if self.error is not None:
            return [f'compile failed: {self.error}']
        out = []
        if self.spill_bytes:
            out.append(f'{self.spill_bytes} bytes of register spills')
        if self.shared_bytes is not None and self.shared_bytes > ARCHS[self.arch]:
            out.append(f'shared memory {self.shared_bytes} B over the sm_{self.arch} limit {ARCHS[self.arch]} B')
        return out


_REGISTRY: Dict[str, Kernel] = {}


def _unwrap(fn: Any) -> Any:
    # triton.autotune / triton.heuristics wrap the JITFunction; each wrapper keeps it as .fn
    from triton.runtime.jit import JITFunction
    while not isinstance(fn, JITFunction):
        inner = getattr(fn, 'fn', None)
        if inner is None:
            raise TypeError(f'aot.register needs a @triton.jit function (or an autotune/heuristics wrapper of one), '
                            f'got {type(fn).__name__}')
        fn = inner
    return fn


def register(name: str, fn: Callable, signature: Mapping[str, str], configs: Sequence[Config],
             dtypes: Sequence[str] = DTYPES) -> None:
    """Add a kernel to the compile report.

    ``signature`` maps every parameter of ``fn``, in order, to a Triton type (``'*fp32'``, ``'i32'``,
    ``'fp32'``, ``'constexpr'``, ...); ``'{dtype}'`` inside a type is replaced by each of ``dtypes``
    (``'*{dtype}'``). Every ``constexpr`` parameter needs a value in each config's ``constexprs``.
    Registering the same name again replaces the entry (a module reloaded in a test).
    """
    from .backend import triton_interpreted
    if triton_interpreted():
        return  # under TRITON_INTERPRET=1 kernels are interpreter functions; nothing is compiled then
    jit_fn = _unwrap(fn)
    params = list(jit_fn.arg_names)
    if list(signature) != params:
        raise ValueError(f'aot.register({name!r}): signature names {list(signature)} must be the kernel\'s '
                         f'parameters in order {params}')
    unknown_dtypes = [d for d in dtypes if d not in DTYPES]
    if not dtypes or unknown_dtypes:
        raise ValueError(f'aot.register({name!r}): dtypes must be a non-empty subset of {DTYPES}, got {tuple(dtypes)}')
    for arg, ty in signature.items():
        base = ty.format(dtype='fp32').lstrip('*')
        if base not in _SCALAR_TYPES:
            raise ValueError(f'aot.register({name!r}): parameter {arg!r} has unknown type {ty!r}; '
                             f'allowed: {sorted(_SCALAR_TYPES)} (with a leading * for pointers)')
    constexpr_args = {a for a, t in signature.items() if t == 'constexpr'}
    if not configs:
        raise ValueError(f'aot.register({name!r}): give at least one Config')
    for cfg in configs:
        missing = constexpr_args - set(cfg.constexprs)
        extra = set(cfg.constexprs) - constexpr_args
        if missing or extra:
            raise ValueError(f'aot.register({name!r}): config {cfg.label()} must set exactly the constexpr '
                             f'parameters {sorted(constexpr_args)} (missing {sorted(missing)}, '
                             f'not constexpr {sorted(extra)})')
    _REGISTRY[name] = Kernel(name, jit_fn, dict(signature), tuple(dtypes), tuple(configs))


def registered() -> Dict[str, Kernel]:
    return dict(_REGISTRY)


def discover() -> List[str]:
    """Import every ``kernels.<op>.triton`` module so that its kernels register; returns the module names."""
    import kernels
    names = []
    for info in pkgutil.iter_modules(kernels.__path__):
        if info.ispkg and importlib.util.find_spec(f'kernels.{info.name}.triton') is not None:
            importlib.import_module(f'kernels.{info.name}.triton')
            names.append(f'kernels.{info.name}.triton')
    return names


def _tool(name: str) -> str:
    import triton
    path = os.path.join(os.path.dirname(triton.__file__), 'backends', 'nvidia', 'bin', name)
    if not os.path.exists(path):
        raise FileNotFoundError(f'{name} not found at {path}; it ships with triton\'s NVIDIA backend')
    return path


def _resource_usage(cubin: bytes) -> Tuple[int, int, int]:
    """(registers, stack + local bytes per thread, static shared bytes) of the single kernel in a cubin.

    Register spills land in the stack frame (ptxas -v: "N bytes stack frame, M bytes spill stores"); Triton
    kernels keep no local arrays, so a non-zero stack or local size means spilled registers."""
    with tempfile.NamedTemporaryFile(suffix='.cubin') as f:
        f.write(cubin)
        f.flush()
        out = subprocess.run([_tool('cuobjdump'), '--dump-resource-usage', f.name], capture_output=True, text=True,
                             check=True).stdout
    match = re.search(r'REG:(\d+) STACK:(\d+) SHARED:(\d+) LOCAL:(\d+)', out)
    if match is None:
        raise RuntimeError(f'cannot read resource usage from cuobjdump output: {out!r}')
    regs, stack, shared, local = map(int, match.groups())
    return regs, stack + local, shared


def compile_kernel(kernel: Kernel, arch: int, dtype: str, config: Config) -> BuildReport:
    """Compile one (kernel, dtype, config) for sm_<arch> and read its resources; errors land in the report."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    report = BuildReport(kernel.name, arch, dtype, config.label())
    signature = {a: t.format(dtype=dtype) for a, t in kernel.signature.items()}
    try:
        src = ASTSource(kernel.fn, signature=signature, constexprs=dict(config.constexprs))
        compiled = triton.compile(src, target=GPUTarget('cuda', arch, 32),
                           options=dict(num_warps=config.num_warps, num_stages=config.num_stages))
        regs, spilled, _static_shared = _resource_usage(compiled.asm['cubin'])
    except Exception as e:  # the report names the failing build; the exit status carries it
        report.error = f'{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ""}'
        return report
    report.registers = regs
    report.spill_bytes = spilled
    report.shared_bytes = int(compiled.metadata.shared)  # Triton's dynamic shared memory, what a launch asks for
    report.wgmma = 'wgmma' in compiled.asm['ptx'] if arch >= 90 else None
    return report


def build_all(archs: Sequence[int] = tuple(ARCHS), only: Optional[str] = None) -> List[BuildReport]:
    discover()
    reports = []
    for name, kernel in sorted(_REGISTRY.items()):
        if only is not None and only not in name:
            continue
        for arch in archs:
            for dtype in kernel.dtypes:
                for cfg in kernel.configs:
                    reports.append(compile_kernel(kernel, arch, dtype, cfg))
    return reports


def format_report(reports: Sequence[BuildReport]) -> str:
    header = f'{"kernel":<32} {"arch":<6} {"dtype":<5} {"regs":>4} {"spill":>5} {"smem KiB":>12}  wgmma  config'
    lines = [header, '-' * len(header)]
    for r in reports:
        if r.error is not None:
            lines.append(f'{r.kernel:<32} sm_{r.arch:<3} {r.dtype:<5} FAILED  {r.config}: {r.error}')
            continue
        smem = f'{r.shared_bytes / 1024:.1f}/{ARCHS[r.arch] // 1024}'
        wgmma = '-' if r.wgmma is None else ('yes' if r.wgmma else 'no')
        flag = '' if r.ok else '  <-- ' + '; '.join(r.problems())
        lines.append(f'{r.kernel:<32} sm_{r.arch:<3} {r.dtype:<5} {r.registers:>4} {r.spill_bytes:>5} {smem:>12}  '
                     f'{wgmma:<5}  {r.config}{flag}')
    bad = sum(not r.ok for r in reports)
    kernels = len({r.kernel for r in reports})
    lines.append(f'{len(reports)} builds of {kernels} kernels: {len(reports) - bad} ok, {bad} with problems')
    return '\n'.join(lines)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog='python -m kernels.aot', description=__doc__.split('\n')[0])
    parser.add_argument('--arch', type=int, nargs='+', choices=sorted(ARCHS), default=sorted(ARCHS))
    parser.add_argument('--only', metavar='TEXT', help='only kernels whose name contains TEXT')
    args = parser.parse_args(argv)
    reports = build_all(args.arch, args.only)
    if not reports:
        print('no Triton kernel is registered' + (f' matching {args.only!r}' if args.only else ''), file=sys.stderr)
        return 1
    print(format_report(reports))
    return 0 if all(r.ok for r in reports) else 1


if __name__ == '__main__':
    # `python -m kernels.aot` runs this file as __main__, while the op modules register into the imported
    # kernels.aot: run that module's main so both see one registry
    from kernels import aot as _registry_module
    sys.exit(_registry_module.main())
