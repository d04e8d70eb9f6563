"""Generated from protos/hwbp/v1 by scripts/protos.py; do not edit."""
