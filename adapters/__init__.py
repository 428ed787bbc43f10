"""Built-in channel adapters, each registered through the `omnihub.adapters` entry points."""
