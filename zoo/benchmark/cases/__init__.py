"""Kernel benchmark wrappers, one module per op: the candidates and anchors that the YAML cases in
configs/benchmarks/kernels/<op>/ name as ``zoo.benchmark.cases.<op>:<function>``. Each takes the random tensors
the harness draws, in the case's order, and builds a well-posed call of the op (or its anchor) from them."""
