"""Warm pools: saved, ready-to-resume VMs of a VMConfig (entries.py: what an entry is;
claims.py: how the scheduler hands one to a VM; controller.py: the loop that keeps each pool
full). Backends own saving and restoring."""
