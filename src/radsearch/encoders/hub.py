"""Hub-backed families (open_clip, transformers, timm). Filled in by the encoder work."""
