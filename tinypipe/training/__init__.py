"""The pieces every trainer shares: the settings check, optimizer and schedule, step planning, resume,
checkpoints, run fingerprints, class images and the diffusion step helpers."""
