"""The lab, apart from the product: attention analysis, export, measurement and benchmarks of models and runtimes,
and complexity counting.

Nothing in the package imports these but the command line (lazily), so ``import csap_zoo`` does not load them.
"""
