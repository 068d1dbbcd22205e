"""Memory planning for real-size models, with no weights read and no GPU: measure a model folder
on the meta device (footprint.py, with peak_memory.py's tracker), choose where each component
lives under a device and a host budget (plan.py), and `paris plan` (cli.py)."""
