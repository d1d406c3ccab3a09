"""Paged-attention and helper kernels, each beside its plain-torch reference (``reference.py``).

Importing this package imports neither torch kernels nor triton, so the CPU path (``reference``)
works where triton is missing or broken. Import a Triton launcher from its own module:

    from sglbench.kernel.decode_attention import decode_attention
    from sglbench.kernel.extend_attention import extend_attention
    from sglbench.kernel.store_kv import store_kv
    from sglbench.kernel.rms_norm import rms_norm

(They are deliberately not re-exported here: each launcher has its module's name, so a package-level
alias would be shadowed by the submodule as soon as the submodule is imported.)
"""
