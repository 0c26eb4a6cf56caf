"""The supervisor process (main) and what it runs: worker slots, store lock, systemd, metrics, health."""
