"""Recipe that trains paris-mini, a tiny Decentralized Diffusion Model, from scratch on CPU.

One module per job: `data` (synthetic clips), `encoders` (tokenizers + frozen text/image
encoders), `vae` (HunyuanVideo VAE training), `latents` (latent cache), `experts` (flow-matching
experts, one per motion cluster), `router` (cluster classifier), `folder` (the model-folder
layout and its writer, which the tests' tiny models use too), `build` (the whole run),
`detector` + `evaluate` (reading generated MP4s back and scoring them).
"""
