"""Test helpers that ship with the package: ``hub_server``, a local Hugging Face Hub-compatible server."""
