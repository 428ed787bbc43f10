"""The customer domain: profiles and the channel identities that point at them.

Usable without the HTTP app (imports, merges and exports from a script); imports nothing
from hub/, adapters/ or plugins/.
"""
