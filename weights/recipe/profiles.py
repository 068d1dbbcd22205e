"""How long each stage of the paris-mini build trains: the shipped model's profile and a tiny one for
tests. Kept apart from build.py so that `paris build-mini --help` does not import torch."""

PROFILES = {
    # the shipped model (55 minutes on 2 cores)
    "full": dict(vae_frame_steps=3000, vae_frame_batch=8, vae_steps=1200, vae_batch=8, per_cluster=2000,
                 expert_steps=2000, expert_batch=64, router_steps=800, router_batch=64, expert_hidden=96,
                 decoder_steps=600, decoder_batch=8),
    # the code path only, for tests
    "tiny": dict(vae_frame_steps=3, vae_frame_batch=2, vae_steps=3, vae_batch=2, per_cluster=8, expert_steps=3,
                 expert_batch=4, router_steps=3, router_batch=4, expert_hidden=32, decoder_steps=2, decoder_batch=2),
}
WORKERS = {"full": 2, "tiny": 1}  # processes training experts/router side by side
