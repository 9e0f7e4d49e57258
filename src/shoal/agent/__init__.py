"""The agent: one per host, running the VMs bound to its node."""

import logging
import warnings

# asyncssh (guest access) still names DSA keys, which the cryptography library warns about at
# import; shoal never uses DSA, and the warning would only clutter every agent's output.
warnings.filterwarnings("ignore", message="DSA is deprecated", module=r"asyncssh(\.|$)")
# asyncssh logs every command it starts at INFO, and a command carries the exports of the VM's
# spec.env (Secret values among them): only its warnings reach shoal's logs.
logging.getLogger("asyncssh").setLevel(logging.WARNING)
