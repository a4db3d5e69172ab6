"""Allocators (architecture §5): layer scores to a per-layer budget, kept exactly.

Convention: the layer judged *worse trained* (``LayerScores.worseness()``) gets *more* sparsity and
*more* experts. One module per family: ``sparsity`` (AlphaPruning and OWL forms, uniform) and
``experts`` (AlphaLoRA/LayerIF form, uniform).
"""
