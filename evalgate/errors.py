"""The one error every layer may raise: its own module, so the engine registry (which config's schema
asks for the registered names) and config need not import each other."""


class ConfigError(ValueError):
    """A bad value in params.yaml (or conf/); the message names the key, the value and what is allowed."""
