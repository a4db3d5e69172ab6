"""Influence estimators, one module each; every one registers through the plugin hooks.

They share :mod:`.capture` (hooks that expose each tracked module's inputs ``a`` and output
gradients ``δ``) and :mod:`.kronecker` (the query gradient in factored form and the score pass
``Σ_t δ_tᵀ V a_t``).
"""
