"""What makes layer scores change with the run's seed, besides the scorer and estimator themselves.

A scorer or estimator declares its own answer when it registers (``seeded=``, see
:meth:`~layerif_core.registry.Registry.uses_seed`). A component that reads the task's data or
scores through a LoRA adapter also depends on how those were made; these two questions are the same
for every such component, so its declaration can ask them here::

    def uses_seed(options, config) -> bool:
        return data_uses_seed(config) or adapter_uses_seed(config)
"""

from __future__ import annotations

from typing import Any


def data_uses_seed(config: Any) -> bool:
    """Whether a task's data are drawn with the run's seed: a bundled task (``bundled:capitals``)
    is generated from it (:func:`~layerif_core.data.is_generated_task`); files and hub datasets
    are read as they are."""
    from layerif_core.data import is_generated_task

    return any(is_generated_task(spec.source) for task in config.tasks
               for spec in (task.train, task.validation))


def adapter_uses_seed(config: Any) -> bool:
    """Whether the scores go through a LoRA adapter fine-tuned with the run's seed: the paper's
    route (``layers.lora_only``) without a given ``model.adapter``, fine-tuned first with
    ``finetune.seed`` unset (the run's seed)."""
    return config.layers.lora_only and not config.model.adapter and config.finetune.seed is None
