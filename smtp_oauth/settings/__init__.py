"""Configuration: pydantic-settings models, cloud presets and the loader (TOML, environment, secrets)."""
