"""`wan-dist download`: fetch a model's checkpoint from Hugging Face or ModelScope (see run.py for the steps).

Nothing here imports a hub client, torch or diffusers at import time; `wan-dist --help` stays fast.
"""
