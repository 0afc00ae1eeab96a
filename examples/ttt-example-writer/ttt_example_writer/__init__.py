"""An example third-party `ttt` plugin: see plugin.py for the hook and writer.py for the module."""
