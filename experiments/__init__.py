"""Command-line entry points: `python -m experiments.<name> ...`.

Run that way, the process first re-executes itself with glibc's transparent-huge-page malloc
tunable (`motif_jax.launch.host_memory`: CPU training steps 5-12% faster; `MOTIF_HUGE_PAGES=0`
turns it off). Importing these modules (tests, notebooks) does nothing of the kind.
"""

from motif_jax.launch import host_memory

host_memory.reexec_with_huge_pages()
