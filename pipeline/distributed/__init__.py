"""A worker group: one engine on rank 0, each expert's rows computed on the ranks that hold it.

Paris experts never talk to each other, so nothing is split inside a forward: every tick rank 0
sends each expert group's rows (latent, timestep, which conditioning) to a rank holding that
expert, the ranks compute at once, and the velocities come back (runner.py on rank 0, rank.py on
the others, wire.py for what travels). Transport is torch.distributed point to point: gloo on
CPUs, NCCL on CUDA (group.py). Where each expert lives comes from the planner
(pipeline/planner/placement.py); launch.py starts the processes, torchrun starts them across
machines.
"""
