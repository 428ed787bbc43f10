"""Built-in hub extension plugins, registered through the `omnihub.plugins` entry points."""
