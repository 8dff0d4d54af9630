"""What a setting changes: comparisons of finished runs (fidelity of videos and latents, time and forwards saved)."""
