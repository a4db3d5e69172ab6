"""layerif application (c): per-layer LoRA ranks for peft from layer scores (``layerif lora-ranks``)."""
