"""VibeVoice (arXiv 2508.19205) at CPU scale: espeak-ng corpus, sigma-VAE acoustic tokenizer, semantic tokenizer,
LM (core Transformer) + diffusion head over the VibeVoice input layout, streaming synthesis, metrics."""
