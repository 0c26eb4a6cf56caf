"""Configuration: the schema and its loader, the value validators, secret sources, and ConfigError."""
