"""Delivery to the HTTP API: the policy for each answer, request headers and body, deadlines, crash guard."""
