"""Generated from the .proto files here by scripts/protos.py; do not edit."""
