"""Training stages: one module each (stage1; stage2 and fusion follow)."""
