"""omnihub: the core of the channel hub (ingest flow, plugins, HTTP app, jobs, CLI)."""

import pluggy

hookimpl = pluggy.HookimplMarker("omnihub")

__all__ = ["hookimpl"]
