"""Training stages: one module each (stage1, stage2, joint: both in one run, fusion)."""
