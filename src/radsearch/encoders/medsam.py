"""SAM-family encoders (LiteMedSAM offline, MedSAM ViT-B by path). Filled in next."""
