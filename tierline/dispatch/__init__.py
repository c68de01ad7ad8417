"""Dispatch: the backend protocol, backends, routing, retries and the run loop."""
