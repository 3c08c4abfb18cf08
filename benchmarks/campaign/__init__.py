"""GPU verification campaign (issue 13). Documented in benchmarks/gpu_campaign.py and docs/gpu.md."""
