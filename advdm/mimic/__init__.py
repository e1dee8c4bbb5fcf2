"""The mimic's own pipeline, as the people who copy a style run it on the user's model: the
views a fine-tuning script makes of an image (views), its LoRA (lora) and fine-tune (finetune),
the sampler (sampler), img2img (img2img) and the cleanups run before training (purification).
The fine-tune-aware attacks and every judge use these, so both see the same mimic."""
