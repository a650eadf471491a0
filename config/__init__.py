"""One typed configuration for gliomaseg: TOML file + environment, read once per process."""

from config.settings import Settings, load_settings

__all__ = ["Settings", "load_settings"]
