"""The three worker processes: ingestor, persister and forwarder."""
